#!/usr/bin/env bash
# bench/gpu-check.sh — issue 7's device check, one script for a lent GPU
# machine (an H100 or H200 with CUDA 13, CMake, PyTorch and transformers;
# no ZeroMQ, msgpack or YAML there). From the repository root:
#
#     bench/gpu-check.sh            # ~6-8 minutes; a table is printed last
#
# 1. builds base/model/cpu/gpu/rdma, the GPU tests and bench_gpu only
#    (-DDUET_GPU_ONLY=ON -DDUET_WITH_CUDA=ON: no ZeroMQ/msgpack/YAML needed);
# 2. runs the GPU tests: backend parity fp32 and bf16, the fixture models
#    end to end against HF, attention and expert shards as two processes over
#    CUDA IPC, and the planted-fault harness check;
# 3. runs bench_gpu: ceilings (D2D copy, cuBLAS bf16 GEMM), expert FFN
#    grouped vs per-expert streams, decode attention, end-to-end decode of the
#    mkmodel "mixtral-8l" checkpoint (written to /dev/shm when it has room);
# 4. runs the HF transformers peer on the same checkpoint with what is left
#    of the time budget.
# Logs and the table go to $OUT (the device tool's output folder) or
# /tmp/duet-gpu-check. Every stage has a timeout inside an overall budget of
# DUET_GPU_CHECK_BUDGET seconds (default 470), so the table always comes out.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-/tmp/duet-gpu-check}
mkdir -p "$OUTDIR"
LOG=$OUTDIR/gpu-check.log
TABLE=$OUTDIR/table.txt
BUILD=${DUET_GPU_BUILD:-build-gpucheck}
BUDGET=${DUET_GPU_CHECK_BUDGET:-470}
: >"$LOG"
: >"$TABLE"
T0=$(date +%s)

elapsed() { echo $(($(date +%s) - T0)); }
say() { echo "[$(elapsed)s] $*" | tee -a "$LOG"; }
row() { echo "$*" >>"$TABLE"; }
# seconds a stage may take: its cap, or what is left of the budget
left() {
    local cap=$1 rem=$((BUDGET - $(elapsed)))
    ((rem < cap)) && cap=$rem
    ((cap < 1)) && cap=1
    echo "$cap"
}

say "duet gpu-check in $(pwd), logs in $OUTDIR"
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)
say "GPU: $GPU"
say "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
row "card: $GPU"

# Development packages carried as .deb files (the device machine fetches
# nothing): put them in .debs/ (ignored by git; name it in the device tool's
# carry list), e.g. on a machine with apt:
#   mkdir -p .debs && (cd .debs && apt-get download libjansson-dev libjansson4 \
#       libpcre2-dev libpcre2-8-0 pkgconf pkgconf-bin libpkgconf3)
DEBS=${DUET_GPU_DEBS:-.debs}
if ls "$DEBS"/*.deb >/dev/null 2>&1; then
    root=/tmp/duet-debs
    mkdir -p "$root"
    for f in "$DEBS"/*.deb; do dpkg -x "$f" "$root"; done
    arch=$(ls -d "$root"/usr/lib/*-linux-gnu 2>/dev/null | head -1)
    export PATH="$root/usr/bin:$PATH"
    export PKG_CONFIG_PATH="$arch/pkgconfig:$root/usr/share/pkgconfig:$root/usr/lib/pkgconfig:${PKG_CONFIG_PATH:-}"
    export PKG_CONFIG_SYSROOT_DIR="$root" CPATH="$root/usr/include:${CPATH:-}"
    export LIBRARY_PATH="$arch:${LIBRARY_PATH:-}" LD_LIBRARY_PATH="$arch:${LD_LIBRARY_PATH:-}"
    say "using carried packages from $DEBS ($(ls "$DEBS"/*.deb | wc -l) .deb files)"
fi

missing=""
command -v pkg-config >/dev/null || missing=" pkg-config"
for p in jansson libpcre2-8; do
    pkg-config --exists "$p" 2>/dev/null || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "missing development packages:$missing (model/ needs them); cannot build." \
        "Carry them as .deb files in .debs/ (see the top of this script) and run again"
    row "build: FAILED (missing:$missing)"
    cat "$TABLE"
    exit 1
fi

# ---- 1. build ------------------------------------------------------------------
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
say "configure + build ($BUILD)"
if timeout "$(left 60)" cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DDUET_GPU_ONLY=ON -DDUET_WITH_CUDA=ON -DDUET_WITH_VERBS=OFF >>"$LOG" 2>&1 &&
    timeout "$(left 240)" cmake --build "$BUILD" -j "$(nproc)" --target test_gpu_parity \
        test_gpu_forward test_gpu_ipc bench_gpu >>"$LOG" 2>&1; then
    row "build: ok ($(elapsed) s)"
else
    say "build FAILED; the end of the log:"
    tail -30 "$LOG"
    row "build: FAILED (see gpu-check.log)"
    cat "$TABLE"
    exit 1
fi

# ---- 2. tests ------------------------------------------------------------------
T=$BUILD/tests/gpu
fails=0
run_test() { # name, command...
    local name=$1
    shift
    say "test $name"
    timeout "$(left 120)" "$@" >"$OUTDIR/$name.log" 2>&1
    local rc=$?
    local verdict=PASS
    case $rc in
    0) ;;
    77) verdict="SKIP ($(head -1 "$OUTDIR/$name.log"))" ;;
    124) verdict="FAIL (timeout)"; fails=$((fails + 1)) ;;
    *) verdict="FAIL (rc $rc)"; fails=$((fails + 1)) ;;
    esac
    case $verdict in FAIL*) grep -E "^FAIL|failures|mismatch|FATAL" "$OUTDIR/$name.log" |
        tail -5 | tee -a "$LOG" ;; esac
    row "test $(printf '%-22s' "$name") $verdict"
}
run_test parity_fp32 "$T/test_gpu_parity" cuda fp32
run_test parity_bf16 "$T/test_gpu_parity" cuda bf16
run_test parity_faulty "$T/test_gpu_parity" faulty
run_test forward_hf "$T/test_gpu_forward" cuda
run_test ipc_2proc "$T/test_gpu_ipc" cuda

# ---- 3. benchmarks ----------------------------------------------------------------
MODEL=${DUET_GPU_MODEL_DIR:-}
if [ -z "$MODEL" ]; then
    shm_free=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}')
    if [ "${shm_free:-0}" -ge 30 ]; then MODEL=/dev/shm/duet-mixtral-8l; else MODEL=/tmp/duet-mixtral-8l; fi
fi
say "bench_gpu (model dir $MODEL)"
timeout "$(left 300)" "$BUILD/bench/bench_gpu" --model-dir "$MODEL" --table "$TABLE" \
    >"$OUTDIR/bench_gpu.log" 2>&1
rc=$?
tail -25 "$OUTDIR/bench_gpu.log" | tee -a "$LOG"
[ $rc -ne 0 ] && row "bench_gpu: rc $rc (see bench_gpu.log)"

# ---- 4. HF transformers peer -------------------------------------------------------
rem=$((BUDGET - $(elapsed)))
if [ -f "$MODEL/config.json" ] && [ $rem -gt 45 ]; then
    say "HF transformers peer ($rem s left)"
    PYTHONUNBUFFERED=1 timeout "$rem" python3 bench/gpu_hf_peer.py "$MODEL" --table "$TABLE" \
        >"$OUTDIR/hf_peer.log" 2>&1
    rc=$?
    tail -8 "$OUTDIR/hf_peer.log" | tee -a "$LOG"
    [ $rc -ne 0 ] && row "HF peer: rc $rc (timeout or error; see hf_peer.log)"
else
    row "HF peer: not run ($rem s left, model ${MODEL})"
fi

echo
echo "== duet gpu-check: $(elapsed) s =="
cat "$TABLE"
exit $((fails > 0))

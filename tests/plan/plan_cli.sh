#!/bin/sh
# duet profile -> duet plan -> duet simulate -> duet generate --topology on
# this host: the planner's deployment file for the demo model loads and
# validates (the topology loader, through `duet simulate`), and a greedy
# generation through it gives the single-process engine's tokens. Also the
# paper's Table 3 catalogue plans Mixtral-8x22B from config.json alone.
# usage: plan_cli.sh DUET SOURCE_DIR
set -eu
duet=$1
src=$2
model="$src/models/pycoder-moe"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$duet" profile --model "$model" --quick --providers shm --out "$tmp/profile.json" >"$tmp/prof.txt" 2>"$tmp/prof.err" ||
    { cat "$tmp/prof.err"; exit 1; }
cat "$tmp/prof.txt"
grep -q '"k1"' "$tmp/profile.json" || { echo "profile has no k1"; exit 1; }
grep -q '"calibrated": true' "$tmp/profile.json" || { echo "profile not calibrated"; exit 1; }
grep -q '"expert_contention"' "$tmp/profile.json" || { echo "profile has no contention table"; exit 1; }
grep -q '"routing"' "$tmp/profile.json" || { echo "profile has no recorded routes"; exit 1; }
cat >"$tmp/hw.yaml" <<YAML
hardware:
  - name: this-host-cpu
    profile: profile.json
    price: 1.0
    memory_gb: 2
    count: 3
YAML
echo "[900, 10, 10, 10, 10, 10, 10, 50]" >"$tmp/loads.json" # a hot expert 0
"$duet" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt 100 --ctx 64 --m 1-2 \
    --loads "$tmp/loads.json" --replicas 1 --out "$tmp/plan.yaml" | tee "$tmp/plan.txt"
grep -q "^wrote $tmp/plan.yaml" "$tmp/plan.txt" || { echo "no deployment written"; exit 1; }
grep -q "kind: attention" "$tmp/plan.yaml" || { echo "no attention shard in the plan"; exit 1; }
grep -q "kind: expert" "$tmp/plan.yaml" || { echo "no expert shard in the plan"; exit 1; }
# every expert is placed somewhere
for e in 0 1 2 3 4 5 6 7; do
    grep "experts: \[" "$tmp/plan.yaml" | grep -q "[[ ]$e[],]" || { echo "expert $e not placed"; exit 1; }
done
# a malformed loads file is refused with where it went wrong
echo "1 2 x" >"$tmp/bad.txt"
if "$duet" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt 100 --loads "$tmp/bad.txt" \
    --out "$tmp/x.yaml" 2>"$tmp/err"; then echo "bad loads accepted"; exit 1; fi
grep -q "byte 4" "$tmp/err" || { cat "$tmp/err"; exit 1; }
# bad option values are refused (exit 2) with the option and the value named
refuse() {
    want=$1
    shift
    set +e
    "$duet" "$@" >/dev/null 2>"$tmp/err"
    rc=$?
    set -e
    [ "$rc" = 2 ] || { echo "duet $*: exit $rc, not 2"; cat "$tmp/err"; exit 1; }
    grep -qF -- "$want" "$tmp/err" || { echo "duet $*: no \"$want\" in:"; cat "$tmp/err"; exit 1; }
}
refuse "--slo-tbt 'abc': expected a number" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt abc
refuse "--slo-tbt '-5'" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt -5
refuse "--ctx '64x'" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt 100 --ctx 64x
refuse "--m (MAX) '9x'" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt 100 --m 1-9x
refuse "--m '0': expected a whole number in 1..16" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt 100 --m 0
refuse "--top '-1'" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt 100 --top -1
refuse "--replicas '2.5'" plan --model "$model" --hardware "$tmp/hw.yaml" --slo-tbt 100 --replicas 2.5
refuse "--tokens '2': expected a whole number in 3.." simulate x.yaml --profile "$tmp/profile.json" --tokens 2
refuse "--requests '12abc'" simulate x.yaml --profile "$tmp/profile.json" --requests 12abc
refuse "--prompt-len ''" simulate x.yaml --profile "$tmp/profile.json" --prompt-len ""
refuse "--threads '0'" profile --threads 0
refuse "--repeats '99999999999999999999'" profile --repeats 99999999999999999999
# loads and validates (topology loader), simulates, draws a trace
"$duet" simulate "$tmp/plan.yaml" --profile "$tmp/profile.json" --requests 8 --tokens 8 \
    --trace "$tmp/sim.json" | tee "$tmp/sim.txt"
grep -q "throughput" "$tmp/sim.txt" || { echo "no simulation result"; exit 1; }
grep -q '"name":"expert"' "$tmp/sim.json" || { echo "simulated trace has no expert events"; exit 1; }
# runs: the deployment's greedy tokens equal the engine's
ids="1,2,3,4,5,6,7"
want=$("$duet" generate --model "$model" --prompt-ids "$ids" --max-tokens 8 --threads 1 --json |
       grep -o '"ids":\[[0-9,]*\]')
got=$(timeout 120 "$duet" generate --topology "$tmp/plan.yaml" --prompt-ids "$ids" --max-tokens 8 --json |
      grep -o '"ids":\[[0-9,]*\]')
echo "engine $want, plan $got"
[ -n "$want" ] && [ "$got" = "$want" ] || { echo "MISMATCH"; exit 1; }
# a model given only as config.json, on the paper's hardware catalogue
"$duet" plan --model "$src/topology/hardware/models/mixtral-8x22b/config.json" \
    --hardware "$src/topology/hardware/table3.yaml" --slo-tbt 150 --top 1 \
    --out "$tmp/mixtral.yaml" >"$tmp/mix.txt" || { cat "$tmp/mix.txt"; exit 1; }
head -4 "$tmp/mix.txt"
grep -q "backend: cuda\|cuda" "$tmp/mixtral.yaml" || { echo "GPU plan without cuda actors"; exit 1; }
echo "ok"

#!/bin/sh
# A multi-host deployment over tcp in network namespaces that this test makes
# itself (issue 8, "real processes too"). Five namespaces ctl, a0, a1, e0, e1
# (one per node), each joined by a veth pair to a bridge in a hub namespace,
# addresses in 10.213.N.0/24 only. models/pycoder-moe with 2 attention shards
# (a0, a1) and 2 expert shards (e0, e1) that both hold every expert (each a
# replica of the other); control plane ZeroMQ tcp, data plane tcp. Node ctl is
# `duet serve --topology F --node ctl` (gateway, scheduler, router); the shards
# are `duet node F --node N`, each started with `ip netns exec`. The client
# (greedy completions through the gateway) runs in namespace ctl.
#
# Fault-free reference run first; then the same requests under
#  (a) partition: e1's link down for 5 s (> the heartbeat timeout), then up:
#      ctl must declare e1 down and the requests finish via e0 while e1 is
#      away; then the same with e0, which passes only if e1 rejoined,
#  (b) random loss: nftables `numgen random mod 100 < 5 drop` (in and out) on
#      e1's interface for a whole run,
#  (c) bandwidth: tc tbf 10mbit on a0's link (both veth ends) for a whole run.
# Every request must complete with the reference's text; the reference must
# equal `duet generate --model` (the single-process engine). Prints timings.
# Exits 77 (skip) without root / netns / nft, and - loudly, as a KNOWN
# FAILURE - while the tcp data plane binds 127.0.0.1 (see below).
#
# usage: netns.sh DUET MODELS_DIR   (KEEP_LOGS=1 keeps the node logs)
set -u
DUET=$1
MODELS=$(cd "$2" 2>/dev/null && pwd) || MODELS=$2
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root (network namespaces)"
command -v ip >/dev/null 2>&1 || skip "no 'ip' (iproute2)"
command -v nft >/dev/null 2>&1 || skip "no 'nft' (nftables; scripts/setup installs it)"
command -v tc >/dev/null 2>&1 || skip "no 'tc' (iproute2)"
command -v python3 >/dev/null 2>&1 || skip "no python3 (the HTTP client)"
[ -f "$MODELS/pycoder-moe/config.json" ] || skip "no model $MODELS/pycoder-moe"

T=dn$$                 # namespace prefix (unique per run)
HUB=${T}hub
NODES="ctl a0 a1 e0 e1"
NET=10.213.$(($$ % 200 + 20))
TMP=$(mktemp -d /tmp/duet-netns-XXXXXX)
PIDS=""
FAILS=0

cleanup() {
    [ -n "${cp:-}" ] && kill -9 "$cp" 2>/dev/null
    for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    # anything else still running in this run's own namespaces (the client)
    for n in $NODES; do
        for p in $(ip netns pids "$T$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    done
    for n in $NODES; do ip netns del "$T$n" 2>/dev/null; done
    ip netns del "$HUB" 2>/dev/null
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ip netns add "$HUB" 2>"$TMP/err" || skip "'ip netns add' fails: $(cat "$TMP/err")"
ip -n "$HUB" link set lo up
ip netns exec "$HUB" nft list tables >/dev/null 2>"$TMP/err" ||
    skip "nft does not work in a namespace: $(cat "$TMP/err")"
ip -n "$HUB" link add br0 type bridge || { echo "FAIL: no bridge in $HUB"; exit 1; }
ip -n "$HUB" link set br0 up
i=1
for n in $NODES; do
    ns=$T$n
    ip netns add "$ns" || { echo "FAIL: ip netns add $ns"; exit 1; }
    ip -n "$ns" link set lo up
    ip -n "$HUB" link add "h$n" type veth peer name eth0 netns "$ns" ||
        { echo "FAIL: veth for $n"; exit 1; }
    ip -n "$HUB" link set "h$n" master br0
    ip -n "$HUB" link set "h$n" up
    ip -n "$ns" addr add "$NET.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    eval "ADDR_$n=$NET.$i"
    i=$((i + 1))
done
addr() { eval "echo \$ADDR_$1"; }
# reachability (the bridge may take a moment)
for n in a0 a1 e0 e1; do
    ok=0
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        # a refused connection (RST) means the host answered
        ip netns exec "${T}ctl" python3 -c "
import socket, sys
try:
    socket.create_connection(('$(addr "$n")', 9), timeout=1)
except ConnectionRefusedError:
    sys.exit(0)
except OSError:
    sys.exit(1)" && { ok=1; break; }
    done
    [ $ok -eq 1 ] || { echo "FAIL: ctl cannot reach $n at $(addr "$n")"; exit 1; }
done

Y=$TMP/deploy.yaml
{
    echo "version: 1"
    echo "name: netns-$$"
    echo "model: $MODELS/pycoder-moe"
    printf 'pipeline:\n  micro_batches: 2\n  token_budget: 128\n'
    printf 'kv_cache:\n  blocks: 512\n  block_size: 16\n'
    printf 'transport:\n  control: tcp\n  data: tcp\n'
    echo "nodes:"
    for n in $NODES; do
        printf '  - name: %s\n    host: %s\n    address: tcp://%s:7%03d\n' \
            "$n" "$(addr "$n")" "$(addr "$n")" $(($$ % 900))
    done
    echo "actors:"
    printf '  - kind: gateway\n    node: ctl\n    listen: %s:8000\n' "$(addr ctl)"
    printf '  - kind: scheduler\n    node: ctl\n  - kind: router\n    node: ctl\n'
    printf '  - kind: attention\n    node: a0\n  - kind: attention\n    node: a1\n'
    printf '  - kind: expert\n    node: e0\n    experts: [0, 1, 2, 3, 4, 5, 6, 7]\n'
    printf '  - kind: expert\n    node: e1\n    experts: [0, 1, 2, 3, 4, 5, 6, 7]\n'
} > "$Y"

start_node() { # NODE
    ip netns exec "$T$1" "$DUET" node "$Y" --node "$1" >>"$TMP/$1.log" 2>&1 &
    eval "PID_$1=$!"
    PIDS="$PIDS $!"
}
for n in a0 a1 e0 e1; do start_node "$n"; done
# Regression check for a fixed bug: the tcp data plane (rdma/tcp.c) binds and
# advertises params.device, which the pipeline once left NULL, so every
# shard's data plane listened on 127.0.0.1 and peers on other hosts connected
# to their own loopback. Caught here, before the 30 s start timeout, from the
# listening sockets in a0's namespace.
i=0
until [ "$(cat "$TMP"/a0.log "$TMP"/a1.log "$TMP"/e0.log "$TMP"/e1.log 2>/dev/null |
           grep -c ': up$')" -ge 4 ]; do
    i=$((i + 1))
    [ $i -le 600 ] || { echo "FAIL: the shard nodes did not come up in 60 s"; tail -3 "$TMP"/*.log; exit 1; }
    sleep 0.1
done
sleep 0.5
if command -v ss >/dev/null 2>&1; then
    ls=$(ip netns exec "${T}a0" ss -ltnpH 2>/dev/null | grep duet)
    if echo "$ls" | grep -q '127\.0\.0\.1:'; then
        echo "FAIL: the tcp data plane of node a0 listens on 127.0.0.1, not on its host"
        echo "$(addr a0) from the deployment file, so shards on other hosts cannot reach it"
        echo "(node_hosts in duet_pipe_config_t -> duet__pipe_dp_open). Listening sockets:"
        echo "$ls"
        exit 1
    fi
fi
ip netns exec "${T}ctl" "$DUET" serve --topology "$Y" --node ctl --host "$(addr ctl)" \
    --port 8000 --request-timeout 120 >"$TMP/ctl.out" 2>"$TMP/ctl.log" &
SERVE=$!
PIDS="$PIDS $SERVE"
i=0
until grep -q "serving" "$TMP/ctl.out" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 900 ] || ! kill -0 $SERVE 2>/dev/null; then
        echo "FAIL: the deployment did not come up (duet serve, 90 s)"
        for n in $NODES; do echo "--- $n"; tail -5 "$TMP/$n.log"; done
        exit 1
    fi
    sleep 0.1
done
echo "deployment up: $(head -1 "$TMP/ctl.out")"
MODEL_NAME=$(sed -n 's/^duet: serving \([^ ]*\) on .*/\1/p' "$TMP/ctl.out")

# The client: N_REQ concurrent greedy completions; prints one JSON line per
# request {"i", "text", "finish", "error"} and the wall time; exit 0 only if all
# completed.
cat > "$TMP/client.py" <<'PY'
import http.client, json, sys, threading, time
host, port, name, n_req, max_tok = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
out = [None] * n_req
def one(i):
    body = json.dumps({"model": name, "prompt": f"def f{i}(x):\n    return x * {i} +",
                       "max_tokens": max_tok, "temperature": 0, "ignore_eos": True})
    try:
        c = http.client.HTTPConnection(host, port, timeout=150)
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
        ch = json.loads(data)["choices"][0]
        out[i] = {"i": i, "text": ch["text"], "finish": ch.get("finish_reason"), "error": None}
    except Exception as e:
        out[i] = {"i": i, "text": None, "finish": None, "error": repr(e)}
t0 = time.monotonic()
th = [threading.Thread(target=one, args=(i,)) for i in range(n_req)]
for t in th: t.start()
for t in th: t.join(timeout=170)
for i, o in enumerate(out):
    print(json.dumps(o if o else {"i": i, "text": None, "finish": None, "error": "no answer (hung)"}))
print(f"WALL {time.monotonic() - t0:.3f}")
sys.exit(0 if all(o and not o["error"] for o in out) else 1)
PY
N_REQ=8
MAX_TOK=96
client() { # OUTFILE
    ip netns exec "${T}ctl" python3 "$TMP/client.py" "$(addr ctl)" 8000 "$MODEL_NAME" \
        $N_REQ $MAX_TOK >"$1" 2>&1
}
wall() { sed -n 's/^WALL //p' "$1"; }

client "$TMP/ref.out" || { echo "FAIL: the fault-free run:"; cat "$TMP/ref.out"; exit 1; }
grep '^{' "$TMP/ref.out" > "$TMP/ref.json"
echo "reference (fault-free): $N_REQ requests x $MAX_TOK tokens in $(wall "$TMP/ref.out") s"
# the reference is not empty and differs between prompts (a check that the
# comparison below can fail)
# and equals the single-process engine's (`duet generate --model`, greedy)
python3 - "$TMP/ref.json" "$DUET" "$MODELS/pycoder-moe" $MAX_TOK <<'PY' ||
import json, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
texts = [r["text"] for r in rows]
assert all(t for t in texts) and len(set(texts)) > 1, f"degenerate: {texts}"
for r in rows:
    i = r["i"]
    g = subprocess.run([sys.argv[2], "generate", "--model", sys.argv[3], "--prompt",
                        f"def f{i}(x):\n    return x * {i} +", "--max-tokens", sys.argv[4],
                        "--json"], capture_output=True, text=True, timeout=60)
    want = json.loads(g.stdout)["text"]
    assert r["text"] == want, f"request {i}: deployment {r['text']!r} != engine {want!r}"
PY
    { echo "FAIL: the fault-free multi-host run is wrong (above)"; exit 1; }
echo "reference equals the single-process engine (duet generate --model) for all $N_REQ prompts"

check() { # CASE OUTFILE CLIENT_RC
    c=$1
    f=$2
    if [ "$3" -ne 0 ]; then
        echo "FAIL [$c]: not every request completed:"
        grep -v '"error": null' "$f" | head -8
        FAILS=$((FAILS + 1))
        return
    fi
    grep '^{' "$f" > "$f.json"
    if ! cmp -s "$f.json" "$TMP/ref.json"; then
        echo "FAIL [$c]: tokens differ from the fault-free run:"
        diff "$TMP/ref.json" "$f.json" | head -6
        FAILS=$((FAILS + 1))
        return
    fi
    tag="ok  "
    [ "$FAILS" -eq "${CASE_F0:-0}" ] || tag=FAIL
    echo "$tag [$c]: $N_REQ requests completed, tokens equal the reference, $(wall "$f") s" \
         "(fault-free $(wall "$TMP/ref.out") s)"
}

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# partition_case NAME NODE HOLD_DS: start the client; 0.2 s later take NODE's
# link down (in the hub) for HOLD_DS tenths of a second, then up again; wait
# for the client. The client must still be running when the link goes down
# (else the case tested nothing) and must be done before the link comes back
# (the other expert shard serves every expert); ctl must declare NODE down
# (missed heartbeats). Prints ctl's detection time from its log's timestamp.
partition_case() {
    CASE_F0=$FAILS
    before=$(grep -c "peer $2 missed" "$TMP/ctl.log")
    client "$TMP/$1.out" &
    cp=$!
    sleep 0.2
    kill -0 $cp 2>/dev/null || { echo "FAIL [$1]: the requests were over before the fault"; FAILS=$((FAILS + 1)); }
    t0=$(now)
    ip -n "$HUB" link set "h$2" down
    k=0
    done_during=no
    while [ $k -lt "$3" ]; do
        sleep 0.1
        k=$((k + 1))
        kill -0 $cp 2>/dev/null || done_during=yes
    done
    ip -n "$HUB" link set "h$2" up
    held=$(since "$t0")
    wait $cp
    rc=$?
    after=$(grep -c "peer $2 missed" "$TMP/ctl.log")
    det=$(grep "peer $2 missed" "$TMP/ctl.log" | tail -1 | cut -c1-12 |
          awk -F: -v t0="$t0" '{ d = $1 * 3600 + $2 * 60 + $3 - (t0 % 86400);
                                   if (d >= 0 && d < 60) printf "%.3f s", d; else print "?" }')
    echo "     [$1]: $2's link down for $held s; ctl declared $2 down after ${det:-?};" \
         "requests done while $2 was away: $done_during"
    [ "$after" -gt "$before" ] || { echo "FAIL [$1]: ctl never declared $2 down"; FAILS=$((FAILS + 1)); }
    [ $done_during = yes ] || [ $rc -ne 0 ] ||
        { echo "FAIL [$1]: the requests finished only after $2 came back (no failover)"; FAILS=$((FAILS + 1)); }
    check "$1" "$TMP/$1.out" $rc
}

# during_case NAME APPLY UNDO: APPLY, run the client to completion under the
# fault, UNDO.
during_case() {
    CASE_F0=$FAILS
    downs=$(cat "$TMP"/*.log | grep -c "missed")
    eval "$2" || { echo "FAIL [$1]: could not apply the fault: $2"; FAILS=$((FAILS + 1)); return; }
    client "$TMP/$1.out"
    rc=$?
    eval "$3"
    echo "     [$1]: peers declared down during the run: $(($(cat "$TMP"/*.log | grep -c "missed") - downs))"
    check "$1" "$TMP/$1.out" $rc
}

# (a) partition of e1 for 5 s (> 3 missed 100 ms heartbeats): e1 is dead to
# the others and e0 (every expert) serves; then e1 must be back in the
# routing: partition e0 the same way - the requests can only finish if e1
# rejoined.
partition_case partition-e1 e1 50
sleep 2
partition_case partition-e0-after-e1-back e0 50
sleep 2

# (b) 5 % random loss, both directions, on e1's interface (nftables numgen)
# for a whole run: TCP retransmits (200 ms minimum RTO), so slower but
# complete. A retransmit can hold heartbeats back past the 3-interval
# failure detector (300 ms): a peer may then be declared down and rejoin;
# the requests must still complete with the reference's tokens.
loss_on() { # NODE
    ip netns exec "$T$1" nft -f - <<EOF
table inet duetloss {
  chain in { type filter hook input priority 0; policy accept; numgen random mod 100 < 5 drop; }
  chain out { type filter hook output priority 0; policy accept; numgen random mod 100 < 5 drop; }
}
EOF
}
loss_off() { ip netns exec "$T$1" nft delete table inet duetloss; }
during_case loss-5pct-e1 "loss_on e1" "loss_off e1"
sleep 1

# (c) 10 mbit/s on a0's link, both directions (tc tbf on both veth ends), for
# a whole run
tbf() { echo "root tbf rate 10mbit burst 32kbit latency 400ms"; }
during_case tbf-10mbit-a0 \
    "ip netns exec ${T}a0 tc qdisc add dev eth0 \$(tbf) && ip netns exec $HUB tc qdisc add dev ha0 \$(tbf)" \
    "ip netns exec ${T}a0 tc qdisc del dev eth0 root; ip netns exec $HUB tc qdisc del dev ha0 root"

# every node process still alive (none crashed under the faults)
for n in a0 a1 e0 e1; do
    eval "p=\$PID_$n"
    kill -0 "$p" 2>/dev/null || { echo "FAIL: node $n exited"; tail -5 "$TMP/$n.log"; FAILS=$((FAILS + 1)); }
done
kill -0 $SERVE 2>/dev/null || { echo "FAIL: duet serve (ctl) exited"; FAILS=$((FAILS + 1)); }
if [ $FAILS -ne 0 ]; then
    echo "--- ctl log (tail)"; tail -15 "$TMP/ctl.log"
    for n in a0 a1 e0 e1; do echo "--- $n log (tail)"; tail -5 "$TMP/$n.log"; done
    echo "FAILED: $FAILS case(s)"
    exit 1
fi
echo ok

#!/bin/sh
# duet run (one process per node, then --single-process) and duet generate
# --topology give the single-process engine's greedy ids for the example
# deployments. The files are copied with names and ipc addresses of their
# own, so that concurrent runs do not share sockets.
# usage: cli_run.sh DUET EXAMPLES_DIR MODELS_DIR
set -eu
duet=$1
dir=$2
models=$3
ids="1,2,3,4,5,6,7"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -f /tmp/duet-t$$-*' EXIT
want=$("$duet" generate --model "$models/pycoder-moe" --prompt-ids "$ids" --max-tokens 12 \
           --threads 1 --json | grep -o '"ids":\[[0-9,]*\]' | sed 's/"ids":\[//; s/\]//')
[ -n "$want" ] || { echo "no engine output"; exit 1; }
echo "engine: $want"
for name in single local-2x4 uneven; do
    f="$tmp/$name.yaml"
    sed -e "s|^name: .*|name: t$$-$name|" \
        -e "s|ipc:///tmp/duet-|ipc:///tmp/duet-t$$-|" \
        -e "s|^model: .*|model: $models/pycoder-moe|" "$dir/$name.yaml" > "$f"
    for mode in "" --single-process; do
        got=$(timeout 60 "$duet" run "$f" $mode --prompt-ids "$ids" --max-tokens 12 2>"$tmp/err") ||
            { cat "$tmp/err"; exit 1; }
        echo "run $name ${mode:-(one process per node)}: $got"
        [ "$got" = "$want" ] || { echo "MISMATCH"; cat "$tmp/err"; exit 1; }
    done
    got=$("$duet" generate --topology "$f" --prompt-ids "$ids" --max-tokens 12 --json |
          grep -o '"ids":\[[0-9,]*\]' | sed 's/"ids":\[//; s/\]//')
    echo "generate --topology $name: $got"
    [ "$got" = "$want" ] || { echo "MISMATCH"; exit 1; }
done
# --trace: one Chrome trace JSON with a named track per actor, from generate
# --topology, run --single-process and run with one process per node (the
# nodes' files merged).
if command -v python3 >/dev/null 2>&1; then
    check_trace() { # FILE ACTOR...
        python3 - "$@" <<'PY'
import json, sys
ev = json.load(open(sys.argv[1]))["traceEvents"]
names = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
for a in sys.argv[2:]:
    assert a in names, (a, names)
xs = [e for e in ev if e["ph"] == "X"]
assert any(e["name"] == "expert" for e in xs) and any(e["name"] == "combine" for e in xs)
s = sorted(e["id"] for e in ev if e["ph"] == "s")
f = sorted(e["id"] for e in ev if e["ph"] == "f")
assert s and set(f) <= set(s), "a flow ends that never started"
# A flow id is (round, kind, attention shard, expert shard) (actors/trace.h).
# A run ends while idle shards' empty last rounds may still be in flight:
# a start without its end is allowed only after the last round whose flow of
# the same kind and attention shard did end (rounds complete in order).
key = lambda i: ((i >> 20) & 1, (i >> 10) & 0x3FF)
last = {}
for i in f:
    last[key(i)] = max(last.get(key(i), -1), i >> 21)
late = [i for i in set(s) - set(f) if (i >> 21) <= last.get(key(i), -1)]
assert not late, "flows do not pair up: %s" % sorted(late)[:8]
print("trace %s: %d events, %d slices, %d flows" % (sys.argv[1], len(ev), len(xs), len(s)))
PY
    }
    f="$tmp/single.yaml"
    "$duet" generate --topology "$f" --prompt-ids "$ids" --max-tokens 4 --trace "$tmp/g.json" >/dev/null
    check_trace "$tmp/g.json" attn/0 expert/0 scheduler
    timeout 60 "$duet" run "$f" --single-process --prompt-ids "$ids" --max-tokens 4 \
        --trace "$tmp/r.json" >/dev/null
    check_trace "$tmp/r.json" attn/0 expert/0 scheduler
    f="$tmp/local-2x4.yaml"
    timeout 60 "$duet" run "$f" --prompt-ids "$ids" --max-tokens 4 --trace "$tmp/m.json" >/dev/null
    check_trace "$tmp/m.json" attn/0 attn/1 expert/0 expert/3 scheduler
    ls "$tmp"/m.json.* >/dev/null 2>&1 && { echo "per-node trace files left behind"; exit 1; }
fi
# duet run watches its node processes: kill -9 of one shuts the deployment
# down with status 3 and a message naming the node and the signal; with
# --restart 1 the node is started again and the deployment keeps running
# until SIGTERM (status 0).
f="$tmp/kill.yaml"
sed -e "s|^name: .*|name: t$$-kill|" \
    -e "s|ipc:///tmp/duet-|ipc:///tmp/duet-t$$-k-|" \
    -e "s|^model: .*|model: $models/pycoder-moe|" "$dir/local-2x4.yaml" > "$f"
start_run() { # ERRFILE ARGS... ; sets $rp
    errf=$1
    shift
    "$duet" run "$f" "$@" 2>"$errf" &
    rp=$!
    i=0
    until [ "$(grep -c ': up$' "$errf")" -ge 6 ]; do
        i=$((i + 1))
        [ $i -le 300 ] || { echo "deployment not up in 60 s"; cat "$errf"; kill -9 $rp; exit 1; }
        sleep 0.2
    done
}
wait_rc() { # PID SECONDS ; sets $rc (124: still running, killed)
    i=0
    while kill -0 "$1" 2>/dev/null; do
        i=$((i + 1))
        [ $i -le $(($2 * 10)) ] || { kill -9 "$1"; wait "$1" 2>/dev/null; rc=124; return; }
        sleep 0.1
    done
    rc=0
    wait "$1" || rc=$?
}
start_run "$tmp/kill.err"
victim=$(pgrep -P $rp -f -- "--node exp2")
[ -n "$victim" ] || { echo "no exp2 child"; exit 1; }
kill -9 "$victim"
wait_rc $rp 30
cat "$tmp/kill.err"
[ $rc -eq 3 ] || { echo "duet run exited $rc after a node was killed, expected 3"; exit 1; }
grep -q "node exp2 (pid $victim) was killed by signal 9" "$tmp/kill.err" ||
    { echo "no report naming the dead node and its signal"; exit 1; }
[ -z "$(pgrep -f -- "$f --node")" ] || { echo "node processes left behind"; exit 1; }
start_run "$tmp/restart.err" --restart 1
victim=$(pgrep -P $rp -f -- "--node exp1")
kill -9 "$victim"
i=0
until grep -q "node exp1 (pid $victim) was killed by signal 9.*restarting" "$tmp/restart.err" &&
      [ "$(pgrep -P $rp -f -- "--node" | wc -l)" -eq 6 ] &&
      [ "$(grep -c 'duet node exp1: up' "$tmp/restart.err")" -ge 2 ]; do
    i=$((i + 1))
    [ $i -le 300 ] || { echo "exp1 not restarted"; cat "$tmp/restart.err"; kill -9 $rp; exit 1; }
    kill -0 $rp 2>/dev/null || { echo "duet run ended"; cat "$tmp/restart.err"; exit 1; }
    sleep 0.2
done
kill -TERM $rp
wait_rc $rp 30
cat "$tmp/restart.err"
[ $rc -eq 0 ] || { echo "duet run exited $rc after SIGTERM, expected 0"; exit 1; }
# duet run itself killed: its node processes stop too (parent-death signal)
start_run "$tmp/orphan.err"
kill -9 $rp
wait $rp 2>/dev/null || true
i=0
while [ -n "$(pgrep -f -- "$f --node")" ]; do
    i=$((i + 1))
    [ $i -le 150 ] || { echo "node processes outlived duet run"; kill -9 $(pgrep -f -- "$f --node"); exit 1; }
    sleep 0.2
done
echo ok

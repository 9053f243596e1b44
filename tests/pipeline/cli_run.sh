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
assert s and s == f, "flows do not pair up"
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
echo ok

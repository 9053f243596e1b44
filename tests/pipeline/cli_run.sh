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

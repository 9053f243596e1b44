#!/bin/sh
# End-to-end tests of the `duet` command: run the binary the way a user does
# and check what it prints against independent references (HF transformers'
# greedy ids and tokenizer ids in reference.json files) or against itself
# (streaming vs --json, same seed vs different seed, shards vs one file).
#
# usage: test_cli.sh CASE DUET PYTHON3 MODELS_DIR FIXTURES_DIR CLI_SRC_DIR
# CASE: generate_reference | generate_prompt_text | generate_stream |
#       generate_sampling | bad_inputs | help | tokenize | mkmodel
# Exit 0 pass, 1 fail, 77 skip. python3 (stdlib only) reads the JSON.
set -u

CASE=$1
DUET=$2
PY=$3
MODELS=$4
FIXTURES=$5
CLI_SRC=$6

PYCODER=$MODELS/pycoder-moe
TINY=$FIXTURES/mixtral-tiny
FAILS=0

if ! "$PY" -c 'import json' 2>/dev/null; then
    echo "SKIP: python3 ($PY) is not usable; it reads the JSON references"
    exit 77
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/duet-cli-test.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT INT TERM

fail() {
    echo "FAIL [$CASE]: $*"
    FAILS=$((FAILS + 1))
}

# jget FILE EXPR: evaluate EXPR over d = the JSON in FILE; a list prints as
# comma-separated items, a string exactly (no newline added), else str().
jget() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
v = eval(sys.argv[2], {"d": d, "len": len})
if isinstance(v, list):
    sys.stdout.write(",".join(str(x) for x in v))
elif isinstance(v, str):
    sys.stdout.buffer.write(v.encode("utf-8"))
else:
    sys.stdout.write(str(v))
EOF
}

# jsplit FILE EXPR DIR: EXPR over d is a list of objects; write each value
# of item i to DIR/i.KEY (formatted as jget does) and print the item count.
# One python3 start for a whole reference file instead of one per value.
jsplit() {
    mkdir -p "$3"
    "$PY" - "$1" "$2" "$3" <<'EOF'
import json, os, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
items = eval(sys.argv[2], {"d": d})
for i, item in enumerate(items):
    for k, v in item.items():
        if isinstance(v, list):
            b = ",".join(str(x) for x in v).encode()
        elif isinstance(v, str):
            b = v.encode("utf-8")
        else:
            b = str(v).encode()
        with open(os.path.join(sys.argv[3], "%d.%s" % (i, k)), "wb") as f:
            f.write(b)
print(len(items))
EOF
}

# A run must not have tripped a sanitizer or died of a signal.
check_clean() { # name rc errfile
    if [ "$2" -ge 128 ]; then
        fail "$1: died with status $2"
    fi
    if grep -q -e 'Sanitizer' -e 'runtime error:' "$3"; then
        fail "$1: sanitizer report:"
        sed -n '1,20p' "$3"
    fi
}

# ok NAME CMD...: CMD must exit 0; stdout in $WORK/out, stderr in $WORK/err.
ok() {
    name=$1
    shift
    "$@" >"$WORK/out" 2>"$WORK/err"
    rc=$?
    check_clean "$name" "$rc" "$WORK/err"
    if [ "$rc" -ne 0 ]; then
        fail "$name: exit $rc: $*"
        sed -n '1,10p' "$WORK/err"
        return 1
    fi
    return 0
}

# bad NAME 'WORDS' CMD...: CMD must exit non-zero (not by a signal), print
# nothing on stdout, and say on stderr every |-separated word of WORDS.
bad() {
    name=$1
    words=$2
    shift 2
    "$@" >"$WORK/out" 2>"$WORK/err"
    rc=$?
    check_clean "$name" "$rc" "$WORK/err"
    if [ "$rc" -eq 0 ]; then
        fail "$name: exit 0, expected an error: $*"
        return
    fi
    if [ -s "$WORK/out" ]; then
        fail "$name: wrote to stdout on error: $(head -c 200 "$WORK/out")"
    fi
    old_ifs=$IFS
    IFS='|'
    for w in $words; do
        if ! grep -q -F -e "$w" "$WORK/err"; then
            fail "$name: message does not mention '$w': $(head -c 300 "$WORK/err")"
        fi
    done
    IFS=$old_ifs
}

gen() { "$DUET" generate --model "$PYCODER" "$@"; }

ref_greedy() { # index field -> comma list / text (after load_ref)
    cat "$WORK/ref/$1.$2"
}
load_ref() { # -> number of greedy prompts
    jsplit "$PYCODER/reference.json" "d['greedy']" "$WORK/ref"
}

# ---- cases ------------------------------------------------------------------

# --prompt-ids with HF's prompt ids: the 48 greedy ids equal HF's (every
# recorded min_margin is far above 1e-3, so the whole continuation counts).
case_generate_reference() {
    n=$(load_ref)
    [ "$n" -ge 5 ] || fail "reference.json has $n greedy prompts, expected 5"
    i=0
    while [ "$i" -lt "$n" ]; do
        margin=$(ref_greedy "$i" min_margin)
        if awk -v m="$margin" 'BEGIN { exit !(m + 0 > 1e-3) }'; then
            pids=$(ref_greedy "$i" prompt_ids)
            want=$(ref_greedy "$i" greedy)
            threads=$((1 + i % 2)) # the result must not depend on the thread count
            if ok "prompt $i" "$DUET" generate --model "$PYCODER" --prompt-ids "$pids" \
                --max-tokens 48 --threads "$threads" --json; then
                got=$(jget "$WORK/out" "d['ids']")
                [ "$got" = "$want" ] ||
                    fail "prompt $i (--threads $threads): ids differ from HF's greedy
  got:  $got
  want: $want"
                [ "$(jget "$WORK/out" "d['prompt_ids']")" = "$pids" ] ||
                    fail "prompt $i: prompt_ids not echoed"
                [ "$(jget "$WORK/out" "d['finish_reason']")" = length ] ||
                    fail "prompt $i: finish_reason is not 'length'"
                ref_greedy "$i" text >"$WORK/want.txt"
                jget "$WORK/out" "d['text']" >"$WORK/got.txt"
                cmp -s "$WORK/want.txt" "$WORK/got.txt" ||
                    fail "prompt $i: text differs from HF's decoded continuation"
            fi
        else
            echo "note: prompt $i has margin $margin < 1e-3; not compared"
        fi
        i=$((i + 1))
    done
    # without --model, the bundled models/pycoder-moe
    if ok "default model" "$DUET" generate --prompt-ids "$(ref_greedy 0 prompt_ids)" \
        --max-tokens 48 --json; then
        [ "$(jget "$WORK/out" "d['ids']")" = "$(ref_greedy 0 greedy)" ] ||
            fail "generate without --model: ids differ from pycoder-moe's greedy ids"
        case $(jget "$WORK/out" "d['model']") in
        */pycoder-moe) ;;
        *) fail "generate without --model used $(jget "$WORK/out" "d['model']")" ;;
        esac
    fi
    # --max-tokens N stops after exactly N tokens, a prefix of the longer run
    pids=$(ref_greedy 0 prompt_ids)
    want=$(ref_greedy 0 greedy | cut -d, -f1-5)
    if ok "max-tokens 5" "$DUET" generate --model "$PYCODER" --prompt-ids "$pids" \
        --max-tokens 5 --json; then
        [ "$(jget "$WORK/out" "d['ids']")" = "$want" ] ||
            fail "--max-tokens 5: ids $(jget "$WORK/out" "d['ids']") are not HF's first 5 ($want)"
    fi
}

# --prompt TEXT: the tokenizer gives HF's prompt ids, and the result is the
# same continuation.
case_generate_prompt_text() {
    n=$(load_ref)
    i=0
    while [ "$i" -lt "$n" ]; do
        prompt=$(ref_greedy "$i" prompt; printf x)
        prompt=${prompt%x} # keep trailing newlines
        if ok "prompt text $i" "$DUET" generate --model "$PYCODER" --prompt "$prompt" \
            --max-tokens 48 --json; then
            got=$(jget "$WORK/out" "d['prompt_ids']")
            want=$(ref_greedy "$i" prompt_ids)
            [ "$got" = "$want" ] || fail "prompt $i: prompt_ids $got, HF's $want"
            got=$(jget "$WORK/out" "d['ids']")
            want=$(ref_greedy "$i" greedy)
            [ "$got" = "$want" ] || fail "prompt $i (--prompt): ids differ from HF's greedy"
        fi
        i=$((i + 1))
    done
}

# Streaming writes the same text as --json's "text" (plus one final newline);
# --stats goes to stderr only.
case_generate_stream() {
    load_ref >/dev/null
    for i in 0 2 4; do
        pids=$(ref_greedy "$i" prompt_ids)
        ok "json $i" "$DUET" generate --model "$PYCODER" --prompt-ids "$pids" --max-tokens 48 \
            --json || continue
        jget "$WORK/out" "d['text']" >"$WORK/json.txt"
        echo >>"$WORK/json.txt"
        ok "stream $i" "$DUET" generate --model "$PYCODER" --prompt-ids "$pids" \
            --max-tokens 48 --stats || continue
        if ! cmp -s "$WORK/json.txt" "$WORK/out"; then
            fail "prompt $i: streamed text differs from --json text"
            diff "$WORK/json.txt" "$WORK/out" | head -10
        fi
        grep -q 'tokens/s' "$WORK/err" || fail "prompt $i: --stats printed no timings on stderr"
    done
}

# Sampling: the same seed gives the same ids, another seed other ids;
# top-k 1 is greedy whatever the temperature.
case_generate_sampling() {
    load_ref >/dev/null
    pids=$(ref_greedy 1 prompt_ids)
    greedy=$(ref_greedy 1 greedy)
    set -- "$DUET" generate --model "$PYCODER" --prompt-ids "$pids" --max-tokens 48 --json
    ok "seed 7 a" "$@" --temperature 0.9 --top-p 0.95 --seed 7 || return
    a=$(jget "$WORK/out" "d['ids']")
    ok "seed 7 b" "$@" --temperature 0.9 --top-p 0.95 --seed 7 || return
    b=$(jget "$WORK/out" "d['ids']")
    ok "seed 8" "$@" --temperature 0.9 --top-p 0.95 --seed 8 || return
    c=$(jget "$WORK/out" "d['ids']")
    [ "$a" = "$b" ] || fail "same seed, different ids:
  $a
  $b"
    [ "$a" != "$c" ] || fail "seeds 7 and 8 gave the same 48 ids: $a"
    [ "$a" != "$greedy" ] || fail "temperature 0.9 gave exactly the greedy ids"
    [ "$(echo "$a" | tr ',' '\n' | wc -l)" -eq 48 ] || fail "sampled run is not 48 ids: $a"
    ok "top-k 1" "$@" --temperature 1.5 --top-k 1 --seed 3 || return
    [ "$(jget "$WORK/out" "d['ids']")" = "$greedy" ] || fail "--top-k 1 is not greedy"
    ok "top-k 5" "$@" --temperature 1.0 --top-k 5 --seed 3 || return
    d=$(jget "$WORK/out" "d['ids']")
    ok "top-k 5 again" "$@" --temperature 1.0 --top-k 5 --seed 3 || return
    [ "$(jget "$WORK/out" "d['ids']")" = "$d" ] || fail "--top-k 5 --seed 3 not reproducible"
}

case_bad_inputs() {
    bad "unknown flag" "--bogus" gen --prompt-ids 1 --bogus
    bad "max-tokens -1" "--max-tokens|-1" gen --prompt-ids 1 --max-tokens -1
    bad "max-tokens 0" "--max-tokens|0" gen --prompt-ids 1 --max-tokens 0
    bad "max-tokens x" "--max-tokens|12x" gen --prompt-ids 1 --max-tokens 12x
    bad "max-tokens no value" "--max-tokens" gen --prompt-ids 1 --max-tokens
    bad "prompt-ids 1,x,3" "--prompt-ids|'x'" gen --prompt-ids 1,x,3
    bad "prompt-ids empty element" "--prompt-ids|element 2" gen --prompt-ids 1,,3
    bad "prompt-ids negative" "--prompt-ids|-5" gen --prompt-ids 1,-5
    bad "prompt-ids out of vocab" "99999|vocabulary" gen --prompt-ids 1,99999
    bad "temperature -1" "--temperature|-1" gen --prompt-ids 1 --temperature -1
    bad "temperature nan" "--temperature|nan" gen --prompt-ids 1 --temperature nan
    bad "top-p 0" "--top-p|0" gen --prompt-ids 1 --top-p 0
    bad "top-p 1.5" "--top-p|1.5" gen --prompt-ids 1 --top-p 1.5
    bad "top-k -1" "--top-k|-1" gen --prompt-ids 1 --top-k -1
    bad "seed -3" "--seed|-3" gen --prompt-ids 1 --seed -3
    bad "threads 0" "--threads|0" gen --prompt-ids 1 --threads 0
    bad "rope-freq" "--rope-freq|bf32" gen --prompt-ids 1 --rope-freq bf32
    bad "no prompt" "--prompt" gen
    bad "both prompts" "--prompt|--prompt-ids" gen --prompt hi --prompt-ids 1
    bad "stray argument" "stray" gen --prompt-ids 1 stray
    bad "empty prompt" "no tokens" gen --prompt ""
    bad "past max positions" "--max-tokens|1024" gen --prompt-ids 1 --max-tokens 5000
    bad "missing model dir" "$WORK/no-such-model" \
        "$DUET" generate --model "$WORK/no-such-model" --prompt-ids 1

    # a model directory with a corrupt config.json / tokenizer.json
    m=$WORK/corrupt
    mkdir -p "$m"
    for f in "$PYCODER"/*.safetensors "$PYCODER"/*.json; do
        ln -s "$f" "$m/$(basename "$f")"
    done
    rm -f "$m/config.json"
    printf '{"model_type": "mixtral", "hidden_size": 256,' >"$m/config.json"
    bad "truncated config.json" "$m/config.json|JSON" \
        "$DUET" generate --model "$m" --prompt-ids 1
    printf '{"model_type": "mixtral"}' >"$m/config.json"
    bad "config.json missing keys" "$m/config.json|hidden_size" \
        "$DUET" generate --model "$m" --prompt-ids 1
    sed 's/"num_hidden_layers": 4/"num_hidden_layers": "four"/' "$PYCODER/config.json" \
        >"$m/config.json"
    bad "config.json wrong type" "$m/config.json|num_hidden_layers" \
        "$DUET" generate --model "$m" --prompt-ids 1
    rm -f "$m/config.json" "$m/tokenizer.json"
    ln -s "$PYCODER/config.json" "$m/config.json"
    printf '{"model": {"type": "BPE", "vocab": ' >"$m/tokenizer.json"
    bad "corrupt tokenizer.json" "$m/tokenizer.json" \
        "$DUET" generate --model "$m" --prompt hello
    rm -f "$m/model-00002-of-00003.safetensors"
    head -c 1000 "$PYCODER/model-00002-of-00003.safetensors" >"$m/model-00002-of-00003.safetensors"
    bad "truncated shard" "model-00002-of-00003.safetensors" \
        "$DUET" generate --model "$m" --prompt-ids 1

    # tokenize and mkmodel
    bad "tokenize no model" "--model" "$DUET" tokenize hello
    bad "tokenize bad decode" "--decode|'x'" "$DUET" tokenize --model "$TINY" --decode 1,x
    bad "tokenize id out of range" "99999|1024" "$DUET" tokenize --model "$TINY" --decode 1,99999
    bad "tokenize unknown flag" "--bogus" "$DUET" tokenize --model "$TINY" --bogus hi
    bad "tokenize missing model" "$WORK/nope" "$DUET" tokenize --model "$WORK/nope" hi
    bad "mkmodel no out" "--out" "$DUET" mkmodel --preset tiny
    bad "mkmodel preset" "huge" "$DUET" mkmodel --out "$WORK/mk" --preset huge
    bad "mkmodel hidden 0" "--hidden|0" "$DUET" mkmodel --out "$WORK/mk" --hidden 0
    bad "mkmodel heads" "--heads|3" "$DUET" mkmodel --out "$WORK/mk" --heads 3
    bad "mkmodel dtype" "--dtype" "$DUET" mkmodel --out "$WORK/mk" --dtype int4
    bad "mkmodel unknown flag" "--bogus" "$DUET" mkmodel --out "$WORK/mk" --bogus
    [ ! -e "$WORK/mk" ] || fail "mkmodel wrote $WORK/mk although its options were bad"
    bad "unknown command" "frobnicate" "$DUET" frobnicate
}

# --help of the command and of every subcommand exits 0 on stdout and names
# every option in the subcommand's getopt tables (read from the cli/cmd_*.c
# file that defines duet_cmd_<name>, so an option added without help fails
# here; cmd_*.c files that define no subcommand are helpers and skipped).
case_help() {
    ok "duet --help" "$DUET" --help || return
    cp "$WORK/out" "$WORK/main-help"
    for src in "$CLI_SRC"/cmd_*.c; do
        cmd=$(sed -n 's/^int duet_cmd_\([a-z0-9_]*\)(.*/\1/p' "$src" | head -n 1)
        [ -n "$cmd" ] || continue
        grep -q "^  $cmd " "$WORK/main-help" || fail "'duet --help' does not list '$cmd'"
        ok "$cmd --help" "$DUET" "$cmd" --help || continue
        [ -s "$WORK/err" ] && fail "duet $cmd --help wrote to stderr"
        grep -q "usage: duet $cmd" "$WORK/out" || fail "duet $cmd --help: no usage line"
        "$PY" - "$src" "$WORK/out" >"$WORK/missing" <<'EOF'
import re, sys
src = open(sys.argv[1], encoding="utf-8").read()
helptext = open(sys.argv[2], encoding="utf-8").read()
flags = set()
# struct option tables: {"name", no_argument|required_argument|optional_argument, ...}
for m in re.finditer(r'\{\s*"([A-Za-z0-9][A-Za-z0-9_-]*)"\s*,\s*'
                     r'(?:no_argument|required_argument|optional_argument|[0-2])\s*,', src):
    flags.add("--" + m.group(1))
# short options of getopt/getopt_long optstrings
for m in re.finditer(r'getopt(?:_long)?\s*\([^,]+,[^,]+,\s*"([^"]*)"', src):
    for ch in m.group(1):
        if ch.isalnum():
            flags.add("-" + ch)
# flags matched by hand: strcmp(arg, "--name")
for m in re.finditer(r'strn?cmp\s*\([^;]*?"(--?[A-Za-z0-9][A-Za-z0-9_-]*)=?"', src):
    flags.add(m.group(1))
if not flags:
    sys.stderr.write("note: %s: no option table or flag comparisons found\n" % sys.argv[1])
for f in sorted(flags):
    if not re.search(r'(?<![\w-])' + re.escape(f) + r'(?![\w-])', helptext):
        print(f)
EOF
        if [ -s "$WORK/missing" ]; then
            fail "duet $cmd --help does not mention: $(tr '\n' ' ' <"$WORK/missing")"
        fi
    done
}

# duet tokenize against HF tokenizers' ids for every tokenizer case of
# mixtral-tiny (text on stdin, so trailing newlines survive), --decode back
# to HF's text, and TEXT given as arguments.
case_tokenize() {
    ref=$TINY/reference.json
    n=$(jsplit "$ref" "d['tokenizer_cases']" "$WORK/tc")
    [ "$n" -gt 0 ] || fail "no tokenizer_cases in $ref"
    i=0
    while [ "$i" -lt "$n" ]; do
        want=$(cat "$WORK/tc/$i.ids")
        if ok "encode $i" "$DUET" tokenize --model "$TINY" - <"$WORK/tc/$i.text"; then
            # the output is a JSON array "[1, 2, 3]"; compare it as "1,2,3"
            got=$(tr -d '\133\135 \n' <"$WORK/out")
            [ "$got" = "$want" ] || fail "case $i: ids [$got], HF's [$want]"
        fi
        if [ -n "$want" ]; then
            if ok "decode $i" "$DUET" tokenize --model "$TINY" --decode "$want"; then
                cmp -s "$WORK/out" "$WORK/tc/$i.decoded" ||
                    fail "case $i: --decode text differs from HF's"
            fi
        fi
        i=$((i + 1))
    done
    # and the output is valid JSON
    if ok "encode json" "$DUET" tokenize --model "$TINY" "a b"; then
        [ "$(jget "$WORK/out" "d")" = "$(tr -d '\133\135 \n' <"$WORK/out")" ] ||
            fail "duet tokenize output is not a JSON array: $(cat "$WORK/out")"
    fi
    # TEXT as arguments (joined by single spaces) and a tokenizer.json path
    if ok "args" "$DUET" tokenize --model "$TINY/tokenizer.json" Hello, world!; then
        [ "$(jget "$WORK/out" "d")" = "42,551,336,14,319,273,78,70,3" ] ||
            fail "'tokenize Hello, world!' as two arguments: $(cat "$WORK/out")"
    fi
    if ok "decode brackets" "$DUET" tokenize --model "$TINY" --decode "[42, 551, 336, 14]"; then
        [ "$(cat "$WORK/out")" = "Hello," ] ||
            fail "--decode '[42, 551, 336, 14]' gave '$(cat "$WORK/out")'"
    fi
    if ok "special" "$DUET" tokenize --model "$TINY" --decode 1,87,511,2 --skip-special; then
        [ "$(cat "$WORK/out")" = "user" ] || fail "--skip-special gave '$(cat "$WORK/out")'"
    fi
    # the demo model's tokenizer gives HF's prompt ids too
    ref_greedy 2 prompt >"$WORK/text"
    if ok "pycoder" "$DUET" tokenize --model "$PYCODER" - <"$WORK/text"; then
        [ "$(jget "$WORK/out" "d")" = "$(ref_greedy 2 prompt_ids)" ] ||
            fail "pycoder prompt 2 ids differ from HF's"
    fi
}

# duet mkmodel writes a loadable checkpoint: generate runs on it, the same
# seed writes the same bytes, shards hold the same tensors (same tokens).
case_mkmodel() {
    for a in mixtral qwen2_moe qwen3_moe olmoe; do
        ok "mkmodel $a" "$DUET" mkmodel --out "$WORK/$a" --arch "$a" --hidden 64 --layers 2 \
            --heads 4 --kv-heads 2 --experts 4 --top-k 2 --expert-dim 32 --vocab 300 --quiet ||
            continue
        grep -q "wrote $WORK/$a" "$WORK/out" || fail "mkmodel $a: no summary on stdout"
        for f in config.json model.safetensors tokenizer.json; do
            [ -s "$WORK/$a/$f" ] || fail "mkmodel $a: no $f"
        done
        [ "$(jget "$WORK/$a/config.json" "d['model_type']")" = "$a" ] ||
            fail "mkmodel $a: config.json model_type is not $a"
        if ok "generate $a" "$DUET" generate --model "$WORK/$a" --prompt "def f(x):" \
            --max-tokens 12 --ignore-eos --json; then
            [ "$(jget "$WORK/out" "len(d['ids'])")" = 12 ] ||
                fail "generate on mkmodel $a: not 12 ids: $(jget "$WORK/out" "d['ids']")"
            [ "$(jget "$WORK/out" "max(d['ids'] + d['prompt_ids']) < 300")" = True ] ||
                fail "generate on mkmodel $a: ids outside the vocabulary of 300"
        fi
    done

    ok "tiny" "$DUET" mkmodel --out "$WORK/t1" --preset tiny --seed 5 --quiet || return
    ok "tiny again" "$DUET" mkmodel --out "$WORK/t2" --preset tiny --seed 5 --quiet || return
    cmp -s "$WORK/t1/model.safetensors" "$WORK/t2/model.safetensors" ||
        fail "mkmodel --seed 5 twice wrote different weights"
    ok "tiny seed 6" "$DUET" mkmodel --out "$WORK/t3" --preset tiny --seed 6 --quiet || return
    cmp -s "$WORK/t1/model.safetensors" "$WORK/t3/model.safetensors" &&
        fail "mkmodel --seed 5 and --seed 6 wrote the same weights"
    ok "tiny sharded" "$DUET" mkmodel --out "$WORK/t4" --preset tiny --seed 5 --shards 3 \
        --quiet || return
    [ -s "$WORK/t4/model.safetensors.index.json" ] || fail "--shards 3: no index"
    for k in 1 2 3; do
        [ -s "$WORK/t4/model-0000$k-of-00003.safetensors" ] || fail "--shards 3: no shard $k"
    done
    [ "$(jget "$WORK/t1/config.json" "d['hidden_size'], d['num_hidden_layers'], d['vocab_size']")" = "(64, 2, 512)" ] ||
        fail "tiny preset config is not hidden 64, 2 layers, vocab 512"
    set -- generate --prompt "hello world" --max-tokens 16 --ignore-eos --json
    ok "generate t1" "$DUET" "$@" --model "$WORK/t1" || return
    a=$(jget "$WORK/out" "d['ids']")
    ok "generate t4" "$DUET" "$@" --model "$WORK/t4" || return
    [ "$(jget "$WORK/out" "d['ids']")" = "$a" ] ||
        fail "one file and 3 shards of the same seed generate different ids"
    ok "tokenize t1" "$DUET" tokenize --model "$WORK/t1" "hello world" || return
    ids=$(jget "$WORK/out" "d")
    if ok "decode t1" "$DUET" tokenize --model "$WORK/t1" --decode "$ids"; then
        [ "$(cat "$WORK/out")" = "hello world" ] || fail "mkmodel tokenizer does not round-trip"
    fi
}

case "$CASE" in
generate_reference | generate_prompt_text | generate_stream | generate_sampling | \
    bad_inputs | help | tokenize | mkmodel)
    "case_$CASE"
    ;;
*)
    echo "unknown case '$CASE'"
    exit 2
    ;;
esac
if [ "$FAILS" -ne 0 ]; then
    echo "$CASE: $FAILS failure(s)"
    exit 1
fi
echo "$CASE: ok"
exit 0

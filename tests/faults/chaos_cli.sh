#!/bin/sh
# duet chaos on tests/faults/mix.yaml: a simulated campaign passes (exit 0),
# a given plan passes and reports its faults and the after-drain data-plane
# check, a scheduler crash is recovered, a bad plan is refused (exit 2).
set -u
DUET=$1
DIR=$2
fail() { echo "FAIL: $*"; exit 1; }
out=$("$DUET" chaos "$DIR/mix.yaml" --sim --campaign 40 --requests 4 --max-tokens 8 2>/dev/null)
rc=$?
echo "$out" | tail -2
[ $rc -eq 0 ] || fail "campaign exit $rc"
echo "$out" | grep -q "campaign: 40 seeds" || fail "no campaign summary"
echo "$out" | grep -q "lost 0, hung 0, mismatched 0" || fail "campaign lost/hung/mismatched"
plan=$(mktemp)
printf 'crash actor=expert/1 at=102ms\ncrash actor=attn/0 at=104ms\ndup p=0.3 type=pipe.result\n' > "$plan"
out=$("$DUET" chaos "$DIR/mix.yaml" --sim --faults "$plan" --seed 3 --requests 6 --max-tokens 12 2>/dev/null)
rc=$?
echo "$out"
[ $rc -eq 0 ] || fail "plan exit $rc"
echo "$out" | grep -q "faults injected: dup [0-9]* crash 2" || fail "faults not reported"
echo "$out" | grep -q "completed 6, ended with error 0, lost 0, hung 0, token mismatches 0" ||
    fail "requests not all completed"
echo "$out" | grep -q "detection: first crash -> new epoch" || fail "no detection time"
echo "$out" | grep -q "data plane of 5 shards: 0 slots held, 0 credits out, 0 round messages" ||
    fail "no data-plane check after drain"
# the scheduler crashes mid-run: restarted, the client re-submits, all complete
printf 'crash actor=scheduler at=104ms\n' > "$plan"
out=$("$DUET" chaos "$DIR/mix.yaml" --sim --faults "$plan" --seed 3 --requests 6 --max-tokens 12 2>/dev/null)
rc=$?
echo "$out" | tail -3
[ $rc -eq 0 ] || fail "scheduler crash: exit $rc"
echo "$out" | grep -q "completed 6, ended with error 0, lost 0, hung 0, token mismatches 0" ||
    fail "scheduler crash: requests not all completed"
echo "$out" | grep -q "faults injected: crash 1" || fail "scheduler crash not injected"
printf 'explode actor=router\n' > "$plan"
"$DUET" chaos "$DIR/mix.yaml" --sim --faults "$plan" >/dev/null 2>&1
rc=$?
rm -f "$plan"
[ $rc -eq 2 ] || fail "a bad plan: exit $rc, expected 2"
"$DUET" chaos --help | grep -q -- "--campaign" || fail "--help"
echo ok

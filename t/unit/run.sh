#!/bin/sh
# Runs every unit-test program in DIR (default build/t) from the repository
# root and prints one closing line "N passed, N failed".  A program that
# crashes or exits non-zero without a summary counts as one failed test.
dir=${1:-build/t}
cd "$(dirname "$0")/../.." || exit 1
passed=0; failed=0
for t in "$dir"/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "# $name"
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out" | sed 's/^/  /'
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
    if [ -n "$line" ]; then
        p=${line%% passed*}; f=${line#*passed, }; f=${f%% failed*}
        passed=$((passed + p)); failed=$((failed + f))
        [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && failed=$((failed + 1)) && echo "  $name exited $rc"
    else
        failed=$((failed + 1)); echo "  $name died (exit $rc) without a summary"
    fi
done
echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

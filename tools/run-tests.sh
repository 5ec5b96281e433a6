#!/bin/sh
# make test: unit tests, then the Test::Nginx suite, then end-to-end client
# tests.  Prints each suite's summary and a final "N passed, N failed"
# (unit checks + Test::Nginx checks + node tests); exits non-zero when
# anything failed or a suite could not run.
#
# Usage: tools/run-tests.sh [BUILD_DIR]   (default build; run from anywhere)
# Environment: TEST_NGINX_BINARY (nginx to run, default: nginx in PATH);
# TEST_FILE_TIMEOUT (seconds per .t file, default 600); any TEST_NGINX_*
# setting of t/README.md is passed on.  Unless a port or
# server root is chosen (TEST_NGINX_PORT, TEST_NGINX_SERVROOT,
# TEST_NGINX_RANDOMIZE), each test file gets a free random port and its own
# t/servroot_PORT, so that several people can run the suite at once.
BUILD=${1:-build}
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
case $BUILD in /*) build_abs=$BUILD ;; *) build_abs=$root/$BUILD ;; esac

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

total_pass=0
total_fail=0
broken=""          # suites that could not run or exited badly

# ---- 1. unit tests ---------------------------------------------------------
echo "== unit tests ($BUILD/t)"
{ t/unit/run.sh "$BUILD/t"; echo $? > "$tmp/unit.rc"; } 2>&1 | tee "$tmp/unit.out"
line=$(grep -E '^unit: [0-9]+ passed, [0-9]+ failed$' "$tmp/unit.out" | tail -1)
if [ -n "$line" ]; then
    p=${line#unit: }; p=${p%% passed*}
    f=${line#*passed, }; f=${f%% failed*}
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
    [ "$(cat "$tmp/unit.rc")" -ne 0 ] && [ "$f" -eq 0 ] && broken="$broken unit"
else
    broken="$broken unit"
fi

# ---- 2. Test::Nginx suite --------------------------------------------------
export TEST_NGINX_LOAD_MODULES="${TEST_NGINX_LOAD_MODULES-$build_abs/nginx/objs/ngx_http_llm_module.so}"
export TEST_NGINX_MODEL_DIR="${TEST_NGINX_MODEL_DIR-$root/t/fixtures/tiny-qwen3}"
if [ -z "$TEST_NGINX_PORT$TEST_NGINX_SERVER_PORT$TEST_NGINX_SERVROOT$TEST_NGINX_RANDOMIZE" ]; then
    export TEST_NGINX_RANDOMIZE=1
fi

# .t files in t/ and in its subfolders other than the harness itself (lib),
# the node tests (e2e), the C tests (unit), data (fixtures) and servroots.
files=$(find t -name '*.t' -type f \
            -not -path 't/lib/*' -not -path 't/e2e/*' -not -path 't/unit/*' \
            -not -path 't/fixtures/*' -not -path 't/servroot*' | LC_ALL=C sort)
echo
echo "== Test::Nginx suite"
if [ -z "$files" ]; then
    echo "no .t files"
elif ! command -v prove >/dev/null 2>&1; then
    echo "prove not found (apt-get install perl)"
    broken="$broken Test::Nginx"
else
    # The bundled harness in t/lib stands in only for a missing real one.
    inc=""
    perl -MTest::Nginx::Socket -e1 >/dev/null 2>&1 || inc="-I t/lib"
    for so in $TEST_NGINX_LOAD_MODULES; do
        [ -f "$so" ] || echo "warning: $so does not exist (make module)"
    done
    # A hung test file must not hang make test: each gets
    # TEST_FILE_TIMEOUT seconds (default 600), then SIGTERM, on which the
    # harness stops its nginx and the file counts as failed.
    exec_cmd="perl $inc"
    command -v timeout >/dev/null 2>&1 && exec_cmd="timeout ${TEST_FILE_TIMEOUT:-600} $exec_cmd"
    # shellcheck disable=SC2086
    { prove --exec "$exec_cmd" $files; echo $? > "$tmp/prove.rc"; } 2>&1 | tee "$tmp/prove.out"
    tests=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$tmp/prove.out" | tail -1)
    failed=$(sed -n 's/.*(Wstat: .* Tests: [0-9]* Failed: \([0-9]*\)).*/\1/p' "$tmp/prove.out" \
             | awk '{ s += $1 } END { print s + 0 }')
    rc=$(cat "$tmp/prove.rc")
    if [ -z "$tests" ]; then
        broken="$broken Test::Nginx"
    else
        total_pass=$((total_pass + tests - failed)); total_fail=$((total_fail + failed))
        echo "Test::Nginx: $((tests - failed)) passed, $failed failed"
        # A file that died, bailed out or broke its plan fails prove
        # without a failed check to count.
        [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && broken="$broken Test::Nginx"
    fi
fi

# ---- 3. end-to-end client tests -------------------------------------------
e2e=$(ls t/e2e/*.test.mjs 2>/dev/null | LC_ALL=C sort)
echo
echo "== end-to-end tests"
if [ -z "$e2e" ]; then
    echo "no t/e2e/*.test.mjs files"
elif ! command -v node >/dev/null 2>&1; then
    echo "node not found (make deps)"
    broken="$broken e2e"
else
    export LLM_BUILD_DIR="$build_abs"
    # TAP ends with "# pass N" / "# fail N" whatever the terminal.
    reporter=""
    node --help 2>/dev/null | grep -q -- --test-reporter && reporter="--test-reporter=tap"
    # shellcheck disable=SC2086
    { node --test $reporter $e2e; echo $? > "$tmp/node.rc"; } 2>&1 | tee "$tmp/node.out"
    pass=$(sed -n 's/^# pass \([0-9]*\)$/\1/p; s/^ℹ pass \([0-9]*\)$/\1/p' "$tmp/node.out" | tail -1)
    fail=$(sed -n 's/^# fail \([0-9]*\)$/\1/p; s/^ℹ fail \([0-9]*\)$/\1/p' "$tmp/node.out" | tail -1)
    rc=$(cat "$tmp/node.rc")
    if [ -z "$pass" ] || [ -z "$fail" ]; then
        broken="$broken e2e"
    else
        total_pass=$((total_pass + pass)); total_fail=$((total_fail + fail))
        echo "e2e: $pass passed, $fail failed"
        [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ] && broken="$broken e2e"
    fi
fi

echo
[ -n "$broken" ] && echo "suites that did not run or exited with an error:$broken"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ] && [ -z "$broken" ]

#!/bin/sh
# Builds the libFuzzer targets fuzz/fuzz_*.c with clang
# (-fsanitize=fuzzer,address,undefined, UB fatal) against a clang-built
# copy of the engine objects under build-fuzz/, replays the crash
# regressions of fuzz/regressions/<target>/, then fuzzes each target for
# FUZZ_SECONDS (default 30) starting from fuzz/corpus/<target>/.
# Prints one closing line "N passed, N failed".
#
#   FUZZ_SECONDS=600 tools/fuzz.sh                 long run of every target
#   FUZZ_TARGETS="fuzz_jinja fuzz_openai" tools/fuzz.sh
#   FUZZ_SECONDS=0 tools/fuzz.sh                   build + regressions only
#   FUZZ_BUILD=dir  (default build-fuzz)   FUZZ_NICE=19 (default 10)
#
# New corpus entries go to $FUZZ_BUILD/corpus/<target>/ (the committed seed
# corpus stays small); findings to $FUZZ_BUILD/artifacts/<target>/.  A
# finding should be copied to fuzz/regressions/<target>/ once understood.
cd "$(dirname "$0")/.." || exit 1

B=${FUZZ_BUILD:-build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-30}
NICE=${FUZZ_NICE:-10}
CLANG=${CLANG:-clang}
SAN="fuzzer-no-link,address,undefined"
# fuzz_config writes its files to $TMPDIR: keep them in memory
[ -d /dev/shm ] && export TMPDIR="${FUZZ_TMPDIR:-/dev/shm}"
TARGETS=${FUZZ_TARGETS:-$(for f in fuzz/fuzz_*.c; do basename "$f" .c; done)}

command -v "$CLANG" >/dev/null 2>&1 || {
    echo "fuzz: $CLANG not found (apt-get install clang)" >&2; exit 1; }

# -max_len per target: text inputs 64 KiB, safetensors headers 1 MiB.
max_len() {
    case "$1" in
        fuzz_safetensors|fuzz_config) echo 1048576 ;;
        *) echo 65536 ;;
    esac
}

# 1. The engine objects, built by the Makefile with clang and the fuzzer
# instrumentation (no main).  Warnings are not errors here: clang warns
# where gcc does not, and the gcc build already enforces -Werror.  UB is
# made fatal so that UBSan findings stop the fuzzer like ASan's.  -k: a
# source that does not build with clang (say, a gcc-only builtin) only
# matters if a target needs it; the link below says so.
nice -n "$NICE" make -s -k BUILD="$B" CC="$CLANG" CUDA=0 \
    OPT="-O1 -fno-sanitize-recover=undefined" WARN="-Wall -Wextra" \
    SAN="$SAN" $(for f in src/*.c; do
        case "$f" in src/ngx_*) ;; *) echo "$B/obj/$(basename "$f" .c).o" ;; esac
    done) 2>&1 | grep -v ' warning: \|^ *[0-9]* | \|^ *| \|warnings\? generated' \
    || true
# Sources clang cannot build (cpu_kernels.c: clang 14 lacks
# __builtin_cpu_supports("f16c")) are built by the default compiler without
# instrumentation: they are the math kernels, which no target fuzzes, but
# the engine objects some targets pull in link against them.
missing=$(for f in src/*.c; do
    case "$f" in src/ngx_*) continue ;; esac
    o="$B/obj/$(basename "$f" .c).o"; [ -f "$o" ] || echo "$o"; done)
if [ -n "$missing" ]; then
    echo "fuzz: not instrumented (built with cc): $missing"
    nice -n "$NICE" make -s BUILD="$B" CUDA=0 SAN= $missing || exit 1
fi
rm -f "$B/libllm-fuzz.a"
ar rcs "$B/libllm-fuzz.a" "$B"/obj/*.o || exit 1

passed=0; failed=0
pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*"; }

mkdir -p "$B/fuzz"
for t in $TARGETS; do
    bin="$B/fuzz/$t"
    # 2. Link the target.
    if ! nice -n "$NICE" "$CLANG" -std=c11 -D_GNU_SOURCE -O1 -g \
            -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
            -Isrc -I/usr/include/cjson "fuzz/$t.c" "$B/libllm-fuzz.a" \
            -lcjson -lpcre2-8 -lutf8proc -lm -lpthread -o "$bin"; then
        fail "$t: build"
        continue
    fi
    pass "$t: built"
    common="-rss_limit_mb=2048 -max_len=$(max_len "$t") -timeout=30"

    # 3. Replay the regressions: each must run without a finding.
    if [ -d "fuzz/regressions/$t" ] && [ -n "$(ls "fuzz/regressions/$t")" ]; then
        if nice -n "$NICE" "$bin" $common fuzz/regressions/"$t"/* \
                > "$B/fuzz/$t.regressions.log" 2>&1; then
            pass "$t: $(ls "fuzz/regressions/$t" | wc -l) regression inputs"
        else
            fail "$t: regression replay (see $B/fuzz/$t.regressions.log)"
            tail -30 "$B/fuzz/$t.regressions.log"
        fi
    fi

    # 4. Fuzz.
    [ "$SECONDS_EACH" -gt 0 ] || continue
    mkdir -p "$B/corpus/$t" "$B/artifacts/$t" "fuzz/corpus/$t"
    log="$B/fuzz/$t.log"
    if nice -n "$NICE" "$bin" $common -max_total_time="$SECONDS_EACH" \
            -print_final_stats=1 -artifact_prefix="$B/artifacts/$t/" \
            "$B/corpus/$t" "fuzz/corpus/$t" > "$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
        pass "$t: ${SECONDS_EACH}s, $execs execs, $cov"
    else
        fail "$t: finding (log $log, input in $B/artifacts/$t/)"
        grep -A25 '^==[0-9]*==ERROR\|runtime error\|^SUMMARY' "$log" | head -40
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

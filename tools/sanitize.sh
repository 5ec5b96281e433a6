#!/bin/sh
# Sanitizer runs of the unit tests:
#   1. every unit test built with -fsanitize=address,undefined (gcc) under
#      build-asan/ and run by t/unit/run.sh; UBSan findings are fatal
#      (halt_on_error), ASan's leak checker is on;
#   2. test_engine built with -fsanitize=thread under build-tsan/ (the
#      engine thread, the thread pool and the submit/cancel/event paths).
# CUDA is off in both (the GPU code is not what runs on the test machine's
# CPU, and nvcc objects are not instrumented).  Prints one closing line
# "sanitize: N passed, N failed" (one per stage: asan+ubsan build, asan+ubsan
# unit run, tsan build, tsan run).
#   SAN_STAGES="asan tsan" (default both)   SAN_NICE=10
cd "$(dirname "$0")/.." || exit 1
NICE=${SAN_NICE:-10}
STAGES=${SAN_STAGES:-asan tsan}
passed=0; failed=0
pass() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*"; }

# Findings abort the test program with a report naming the file and line;
# run.sh then counts that program as failed.  Leaks are reported at exit.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=0:exitcode=66:second_deadlock_stack=1:history_size=4}"

for stage in $STAGES; do
    case "$stage" in
    asan)
        if nice -n "$NICE" make -s BUILD=build-asan CUDA=0 SAN=address,undefined \
                OPT="-O1 -fno-sanitize-recover=undefined" units; then
            pass "asan+ubsan: unit tests built"
            if t/unit/run.sh build-asan/t > build-asan/unit.log 2>&1; then
                pass "asan+ubsan: $(tail -1 build-asan/unit.log)"
            else
                fail "asan+ubsan: $(tail -1 build-asan/unit.log) (log build-asan/unit.log)"
                grep -A30 'ERROR: \(Address\|Leak\)Sanitizer\|runtime error\|died\|exited' \
                    build-asan/unit.log | head -60
            fi
        else
            fail "asan+ubsan: build"
        fi
        ;;
    tsan)
        if nice -n "$NICE" make -s BUILD=build-tsan CUDA=0 SAN=thread OPT=-O1 \
                build-tsan/t/test_engine; then
            pass "tsan: test_engine built"
            # Kernels with high mmap randomization (vm.mmap_rnd_bits > 28)
            # break TSan's shadow layout ("unexpected memory mapping");
            # running without ASLR avoids that where setarch is allowed.
            run="build-tsan/t/test_engine"
            if setarch "$(uname -m)" -R true 2>/dev/null; then
                run="setarch $(uname -m) -R $run"
            fi
            if $run > build-tsan/test_engine.log 2>&1; then
                pass "tsan: test_engine $(tail -1 build-tsan/test_engine.log)"
            else
                fail "tsan: test_engine (log build-tsan/test_engine.log)"
                grep -A40 'WARNING: ThreadSanitizer\|FATAL\|ERROR' \
                    build-tsan/test_engine.log | head -80
                tail -3 build-tsan/test_engine.log
            fi
        else
            fail "tsan: build"
        fi
        ;;
    *) fail "unknown stage $stage" ;;
    esac
done
echo "sanitize: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

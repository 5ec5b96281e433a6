#!/bin/sh
# Sanitizer runs of the unit tests:
#   1. every unit test built with -fsanitize=address,undefined (gcc) under
#      build-asan/ and run by t/unit/run.sh; UBSan findings are fatal
#      (halt_on_error), ASan's leak checker is on;
#   2. test_engine built with -fsanitize=thread under build-tsan/ (the
#      engine thread, the thread pool and the submit/cancel/event paths);
#   3. (stage "nginx") the Test::Nginx suite against the module built with
#      -fsanitize=address,undefined under build-asan/, loaded into the
#      distribution's nginx with gcc's libasan preloaded (nginx itself is not
#      instrumented, so the runtime must come first: LD_PRELOAD, through a
#      wrapper used as TEST_NGINX_BINARY so that perl and curl stay plain);
#      leak checking is off there (nginx does not free its pools at exit:
#      the valgrind stage is the leak check);
#   4. (stage "valgrind") Test::Nginx files (VALGRIND_TEST_FILES, default
#      the request-path files 110-196) with the module built normally but
#      CUDA=0 under build-valgrind/ (VALGRIND_MODULE=path to choose another)
#      under TEST_NGINX_USE_VALGRIND (memcheck, --leak-check=full,
#      suppressions t/valgrind.supp; slow: opt-in, about an hour on a loaded
#      2-core machine; VALGRIND_JOBS=N files at once).  Fails on any
#      memcheck error or definite leak that is not suppressed, and on any
#      failed test; results in build-valgrind/test.log.
# CUDA is off in both (the GPU code is not what runs on the test machine's
# CPU, and nvcc objects are not instrumented).  Prints one closing line
# "sanitize: N passed, N failed" (one per stage: asan+ubsan build, asan+ubsan
# unit run, tsan build, tsan run).
#   SAN_STAGES="asan tsan nginx valgrind" (default "asan tsan nginx")
#   SAN_NICE=10   SAN_TEST_FILES="t/110-chat.t ..." (default: t/*.t but
#   t/000-harness.t, which tests the harness itself on plain nginx,
#   including its own valgrind mode)
cd "$(dirname "$0")/.." || exit 1
NICE=${SAN_NICE:-10}
STAGES=${SAN_STAGES:-asan tsan nginx}
NGINX=${TEST_NGINX_BINARY:-$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)}
TEST_FILES=${SAN_TEST_FILES:-$(ls t/*.t | grep -v '^t/000-harness\.t$')}
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
    nginx)
        if ! nice -n "$NICE" make -s BUILD=build-asan CUDA=0 SAN=address,undefined \
                OPT="-O1 -fno-sanitize-recover=undefined" module; then
            fail "nginx+asan: module build"
            continue
        fi
        logs=$PWD/build-asan/nginx-logs
        rm -rf "$logs" && mkdir -p "$logs"
        wrapper=$PWD/build-asan/nginx-asan
        cat > "$wrapper" <<WRAP
#!/bin/sh
# $NGINX with ASan's runtime first (written by tools/sanitize.sh)
LD_PRELOAD="$(gcc -print-file-name=libasan.so)\${LD_PRELOAD:+ \$LD_PRELOAD}" \\
ASAN_OPTIONS="detect_leaks=0:log_path=$logs/asan" \\
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan" \\
exec "$NGINX" "\$@"
WRAP
        chmod +x "$wrapper"
        inc=""
        perl -MTest::Nginx::Socket -e1 >/dev/null 2>&1 || inc="-I t/lib"
        # shellcheck disable=SC2086
        TEST_NGINX_BINARY=$wrapper \
        TEST_NGINX_LOAD_MODULES=$PWD/build-asan/nginx/objs/ngx_http_llm_module.so \
        TEST_NGINX_MODEL_DIR=$PWD/t/fixtures/tiny-qwen3 TEST_NGINX_RANDOMIZE=1 \
            nice -n "$NICE" prove --exec "timeout ${TEST_FILE_TIMEOUT:-900} perl $inc" \
            $TEST_FILES > build-asan/nginx-test.log 2>&1
        rc=$?
        result=$(grep -E '^(Result|Files=)' build-asan/nginx-test.log | tr '\n' ' ')
        if [ -n "$(ls "$logs")" ]; then
            fail "nginx+asan: sanitizer reports in $logs"
            head -60 "$logs"/*
        elif [ "$rc" -ne 0 ]; then
            fail "nginx+asan: Test::Nginx $result (log build-asan/nginx-test.log)"
            grep -E '^t/.*(Dubious|Failed)|^Failed|Wstat' build-asan/nginx-test.log | head -20
        else
            pass "nginx+asan: Test::Nginx $result"
        fi
        ;;
    valgrind)
        # The module built normally (no sanitizer, the Makefile's flags) but
        # without CUDA, under build-valgrind/: GPU code cannot run under
        # valgrind, and the cuBLAS/cudart constructors alone take about a
        # minute of every nginx start there (each block restarts nginx).
        # VALGRIND_MODULE=path runs another build (it is copied first, so
        # that a rebuild during the long run cannot swap it under nginx).
        vdir=$PWD/build-valgrind
        if [ -n "${VALGRIND_MODULE:-}" ]; then
            mkdir -p "$vdir" \
                && cp "$VALGRIND_MODULE" "$vdir/module-copy.so" || {
                fail "valgrind: cannot copy $VALGRIND_MODULE to $vdir"; continue; }
            module=$vdir/module-copy.so
        else
            if ! nice -n "$NICE" make -s BUILD=build-valgrind CUDA=0 module; then
                fail "valgrind: module build"
                continue
            fi
            module=$vdir/nginx/objs/ngx_http_llm_module.so
        fi
        # Every block restarts nginx under valgrind (tens of seconds each):
        # the default is the files that exercise the request paths.
        vfiles=${VALGRIND_TEST_FILES:-t/110-chat.t t/120-stream.t t/130-completions.t t/140-errors.t t/150-endpoints.t t/170-disconnect.t t/180-concurrency.t t/190-shutdown.t t/195-structured.t t/196-tools.t}
        inc=""
        perl -MTest::Nginx::Socket -e1 >/dev/null 2>&1 || inc="-I t/lib"
        # t/valgrind.supp: glibc and CUDA-library noise, each entry
        # explained there; the harness adds nginx's own exit-time leaks.
        # --keep-debuginfo: nginx dlcloses the module at exit, and a leak
        # allocated in it would otherwise show "???" instead of file:line.
        # Valgrind runs everything 20-50 times slower: the harness's 3 s
        # client timeout becomes TEST_NGINX_TIMEOUT (default 60 here).
        # shellcheck disable=SC2086
        TEST_NGINX_USE_VALGRIND="--tool=memcheck --leak-check=full --show-possibly-lost=no --keep-debuginfo=yes --suppressions=$PWD/t/valgrind.supp" \
        TEST_NGINX_TIMEOUT=${TEST_NGINX_TIMEOUT:-60} TEST_NGINX_BINARY=$NGINX \
        TEST_NGINX_LOAD_MODULES=$module \
        TEST_NGINX_MODEL_DIR=$PWD/t/fixtures/tiny-qwen3 TEST_NGINX_RANDOMIZE=1 \
            nice -n "$NICE" prove -j "${VALGRIND_JOBS:-1}" \
            --exec "timeout ${TEST_FILE_TIMEOUT:-1800} perl $inc" \
            $vfiles > "$vdir/test.log" 2>&1
        rc=$?
        result=$(grep -E '^(Result|Files=)' "$vdir/test.log" | tr '\n' ' ')
        # memcheck's findings fail their block ("valgrind reported
        # errors", the report follows as diagnostics); list them apart
        # from ordinary test failures.
        reports=$(grep -c 'valgrind reported errors$' "$vdir/test.log")
        if [ "$rc" -eq 0 ]; then
            pass "valgrind: Test::Nginx $result"
        else
            fail "valgrind: Test::Nginx $result, $reports blocks with a valgrind report (log $vdir/test.log)"
            grep -E 'valgrind reported|^t/.*(Dubious|Failed)|Bailout' "$vdir/test.log" | head -20
        fi
        ;;
    *) fail "unknown stage $stage" ;;
    esac
done
echo "sanitize: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# The one prepared GPU check of the CUDA backend (issue 7): build with
# CUDA=1, check against the goldens and the CPU backend, run the attention
# self-test and a compute-sanitizer memcheck on a small run, then benchmark a
# random model of Qwen3-4B-Instruct-2507's shape.  Well under 8 minutes on an
# H200; every stage has its own timeout.  Logs go to $OUT (the device tool's
# output folder) or build/gpu-check.
#
#   tools/gpu-check.sh --prepare   on a build machine without a GPU: build
#                                  build/bin/llm-cuda-check with CUDA=1 and
#                                  copy the shared libraries it needs that a
#                                  bare CUDA image may lack (cJSON, PCRE2,
#                                  utf8proc) into build/gpu-libs
#   tools/gpu-check.sh             on the GPU machine; uses the prepared
#                                  binary when it runs there, else builds
#
# With the device tool: run --prepare here, then run the script there with
# carry ["build/bin/llm-cuda-check", "build/gpu-libs"].
# Exit status: 0 all checks passed, 1 a check failed, 2 build/setup failed.
set -u -o pipefail
cd "$(dirname "$0")/.."

BIN=build/bin/llm-cuda-check
LIBDIR=build/gpu-libs

if [ "${1:-}" = "--prepare" ]; then
    make CUDA=1 lib "$BIN" || exit 2
    mkdir -p "$LIBDIR"
    for lib in libcjson.so.1 libpcre2-8.so.0 libutf8proc.so.2 libutf8proc.so.3; do
        path=$(ldd "$BIN" | awk -v l="$lib" '$1 == l { print $3 }')
        [ -n "$path" ] && cp -L "$path" "$LIBDIR/$lib"
    done
    ls -l "$BIN" "$LIBDIR"
    exit 0
fi

OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"
start=$(date +%s)
stage() { echo "== $* ($(( $(date +%s) - start )) s)"; }

stage "machine"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.mem \
    --format=csv 2>&1 | tee "$OUT/gpu.txt"
nvcc --version 2>/dev/null | tail -n 2

# The prepared binary, if it starts here; otherwise build in place.
export LD_LIBRARY_PATH="$PWD/$LIBDIR:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -x "$BIN" ] && ! ldd "$BIN" | grep -q "not found"; then
    stage "using the prepared $BIN"
else
    stage "building with CUDA=1"
    export PATH="/usr/local/cuda/bin:$PATH"
    if ! make -j"$(nproc)" CUDA=1 lib "$BIN" > "$OUT/build.log" 2>&1; then
        tail -n 40 "$OUT/build.log"
        echo "gpu-check: build failed (log: $OUT/build.log)"
        exit 2
    fi
fi

status=0
stage "correctness: goldens, CPU backend, attention self-test, Qwen3-0.6B shape"
timeout 240 "$BIN" --no-bench 2>&1 | tee "$OUT/check.log"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && status=1 && echo "gpu-check: correctness exit status $rc"

if command -v compute-sanitizer > /dev/null; then
    stage "compute-sanitizer memcheck (tiny fixtures, short attention cases)"
    timeout 120 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 \
        "$BIN" --quick > "$OUT/memcheck.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|^FAILED|Invalid|out of bounds" "$OUT/memcheck.log" | head -n 20
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "gpu-check: memcheck exit status $rc (log: $OUT/memcheck.log)"
        tail -n 30 "$OUT/memcheck.log"
    fi
else
    echo "gpu-check: compute-sanitizer not found, memcheck skipped"
fi

stage "benchmark: random weights, Qwen3-4B-Instruct-2507 shape"
timeout 240 "$BIN" --bench-only 2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && status=1 && echo "gpu-check: benchmark exit status $rc"

stage "summary"
grep -c "^ok" "$OUT/check.log" | sed 's/^/checks passed: /'
grep "^FAILED" "$OUT/check.log" "$OUT/bench.log" 2>/dev/null
grep "^bench:" "$OUT/bench.log"
echo "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
exit $status

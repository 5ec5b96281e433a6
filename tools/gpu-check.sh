#!/usr/bin/env bash
# The one prepared GPU check of the CUDA backend (issue 7).  Stages, each
# with its own timeout inside one overall budget (GPU_CHECK_BUDGET, 470 s),
# each ending in one line "PASS <stage>", "FAIL <stage> (...)" or
# "SKIP <stage> (...)":
#
#   correctness  llm-cuda-check --no-bench --no-sampling: goldens, CPU
#                backend, attention self-test, Qwen3-0.6B shape vs CPU
#   sampling     llm-cuda-check --sampling: device sampling vs the CPU
#                sampler, its timings
#   nginx        Debian's nginx with the module serving a random model of
#                Qwen3-4B-Instruct-2507's shape on device=cuda: a streaming
#                chat completion, then llm-serve-bench at concurrency 1 and
#                64 against llm-bench offline (bar: >= 95% output tok/s)
#   bench        llm-cuda-check --bench-only (Qwen3-4B shape)
#   memcheck     compute-sanitizer on the tiny fixtures (SKIP where the
#                runtime refuses it, e.g. gVisor)
#
#   tools/gpu-check.sh --prepare   on the build machine (no GPU needed):
#                                  builds with CUDA=1 (lib, tools, module)
#                                  and packs the binaries, Debian's nginx,
#                                  the module and the shared libraries a
#                                  bare CUDA image may lack into
#                                  build/gpu/payload.tar.gz
#   tools/gpu-check.sh [--only correctness,sampling,nginx,bench,memcheck]
#                                  on the GPU machine; logs in $OUT (the
#                                  device tool's output folder) or
#                                  build/gpu-check
#   tools/gpu-check.sh --nginx     the nginx stage alone (no budget)
#
# With the device tool: run --prepare here, then
#   run(command="tools/gpu-check.sh", carry=["build/gpu"], timeout_s=540)
# Where a carried binary does not start there, the tools are built in place
# (CUDA=1); the module cannot be (no nginx source there): the nginx stage
# then fails with that reason.
# Exit status: 0 every stage passed or was skipped, 1 a stage failed,
# 2 build/setup failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PREP=build/gpu
PAYLOAD=$PREP/payload.tar.gz
X=$PREP/x                   # the payload, unpacked on the GPU machine
BUDGET=${GPU_CHECK_BUDGET:-470}
# The nginx stage's model and device; the overrides let the stage's
# plumbing be tried on a machine without a GPU (tiny model, cpu).
MODEL4B=${GPU_CHECK_MODEL:-t/fixtures/configs/qwen3-4b-instruct-2507}
NGX_DEVICE=${GPU_CHECK_DEVICE:-cuda}
KV_MIB=${GPU_CHECK_KV_MIB:-16384}

# ---- --prepare: build and pack ----------------------------------------------

# Shared libraries the carried programs need, less glibc's own (the GPU
# machine's is newer), CUDA's (the machine has CUDA 13 in /usr/local/cuda)
# and the C++ runtime (every CUDA image has it).
needed_libs() {
    ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
        grep -v -E '^(libc|libm|libpthread|libdl|librt|libresolv|libutil|ld-linux[^ ]*|libstdc\+\+|libgcc_s)\.so|/usr/local/cuda'
}

prepare() {
    local stage=$PREP/stage b missing
    export PATH="/usr/local/cuda/bin:$PATH"
    make CUDA=1 lib build/bin/llm-cuda-check build/bin/llm-bench \
        build/bin/llm-serve-bench module || exit 2
    [ -x /usr/sbin/nginx ] || { echo "gpu-check: no /usr/sbin/nginx here (make deps)"; exit 2; }
    rm -rf "$stage" && mkdir -p "$stage/bin" "$stage/lib" "$stage/syslib" || exit 2
    cp build/bin/llm-cuda-check build/bin/llm-bench build/bin/llm-serve-bench \
        /usr/sbin/nginx "$stage/bin/" || exit 2
    cp build/nginx/objs/ngx_http_llm_module.so "$stage/lib/" || exit 2
    # debug info is most of their size; the carry is limited
    strip --strip-debug "$stage"/bin/* "$stage"/lib/*.so || exit 2
    needed_libs "$stage"/bin/* "$stage"/lib/*.so | while read -r name path; do
        cp -L "$path" "$stage/syslib/$name" && strip --strip-unneeded "$stage/syslib/$name"
    done
    missing=$(LD_LIBRARY_PATH="$stage/syslib" ldd "$stage"/bin/* "$stage"/lib/*.so | grep "not found")
    [ -z "$missing" ] || { echo "gpu-check: unresolved libraries: $missing"; exit 2; }
    /usr/sbin/nginx -v > "$stage/nginx-version.txt" 2>&1
    git rev-parse HEAD > "$stage/commit.txt" 2>/dev/null
    rm -f "$PAYLOAD"
    tar czf "$PAYLOAD" -C "$stage" . || exit 2
    rm -rf "$stage" "$X"
    ls -l "$PAYLOAD"
    # the device tool carries the tree (tracked and untracked, not ignored)
    # plus the carried paths: 64 MiB in all
    local tree pay
    tree=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } |
           xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
    pay=$(stat -c %s "$PAYLOAD")
    echo "gpu-check: tree $((tree / 1048576)) MiB + payload $((pay / 1048576)) MiB" \
         "= $(((tree + pay) / 1048576)) MiB of the device tool's 64"
    [ $((tree + pay)) -lt $((64 * 1048576)) ] || { echo "gpu-check: over 64 MiB"; exit 2; }
    echo "gpu-check: prepared; on the GPU machine: tools/gpu-check.sh (carry build/gpu)"
    exit 0
}

# ---- on the GPU machine: the payload and the programs --------------------------

OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT

setup_payload() {
    if [ -f "$PAYLOAD" ] && [ ! -d "$X/bin" ]; then
        mkdir -p "$X" && tar xzf "$PAYLOAD" -C "$X" || { echo "gpu-check: cannot unpack $PAYLOAD"; return 1; }
    fi
    # only the carried libraries this machine lacks go on the path
    rm -rf "$X/use-libs" && mkdir -p "$X/use-libs"
    local f name
    for f in "$X"/syslib/*; do
        [ -e "$f" ] || continue
        name=$(basename "$f")
        if ! { command -v ldconfig > /dev/null && ldconfig -p | awk '{print $1}' | grep -qxF "$name"; }; then
            ln -sf "$ROOT/$f" "$X/use-libs/$name"
        fi
    done
    export LD_LIBRARY_PATH="$ROOT/$X/use-libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# prog NAME: the carried program if it starts here, else build/bin/NAME
# (built in place once)
BUILT=0
prog() {
    local p="$X/bin/$1"
    if [ -x "$p" ] && ! ldd "$p" 2>/dev/null | grep -q "not found"; then
        echo "$ROOT/$p"
        return 0
    fi
    if [ $BUILT = 0 ]; then
        BUILT=1
        echo "gpu-check: $p does not start here; building with CUDA=1" >&2
        PATH="/usr/local/cuda/bin:$PATH" make -j"$(nproc)" CUDA=1 lib build/bin/llm-cuda-check \
            build/bin/llm-bench build/bin/llm-serve-bench > "$OUT/build.log" 2>&1 ||
            { tail -n 30 "$OUT/build.log" >&2; echo "gpu-check: build failed" >&2; }
    fi
    [ -x "build/bin/$1" ] && echo "$ROOT/build/bin/$1"
}

# ---- the nginx stage ------------------------------------------------------------

NGX_PID=""
NGX_PREFIX=""

stop_nginx() {
    if [ -n "$NGX_PID" ] && kill -0 "$NGX_PID" 2>/dev/null; then
        kill -QUIT "$NGX_PID"
        for _ in $(seq 50); do kill -0 "$NGX_PID" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$NGX_PID" 2>/dev/null && kill -TERM "$NGX_PID"
        sleep 0.5
        kill -0 "$NGX_PID" 2>/dev/null && kill -KILL "$NGX_PID"
    fi
    if [ -n "$NGX_PREFIX" ]; then
        cp "$NGX_PREFIX/logs/error.log" "$OUT/nginx-error.log" 2>/dev/null
        rm -rf "$NGX_PREFIX"
    fi
    NGX_PID=""
    NGX_PREFIX=""
}

# http_get URL: exit 0 when it answers 2xx (curl, else python3)
http_get() {
    if command -v curl > /dev/null; then
        curl -sf -o /dev/null --max-time 5 "$1"
    else
        python3 - "$1" <<'EOF' > /dev/null 2>&1
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=5).status < 300 else 1)
EOF
    fi
}

# chat_stream URL BODY: prints the SSE stream
chat_stream() {
    if command -v curl > /dev/null; then
        curl -sN --max-time 60 -H 'Content-Type: application/json' -d "$2" "$1"
    else
        python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as r:
    for line in r:
        sys.stdout.write(line.decode())
EOF
    fi
}

tps() { awk -F: '/^Output token throughput/ {gsub(/ /, "", $2); print $2}' "$1"; }

nginx_stage() {
    local nginx="$X/bin/nginx" module="$X/lib/ngx_http_llm_module.so" port user="" fails=0
    local bench serve body c n r t_off t_ngx
    trap 'stop_nginx; exit 143' TERM INT
    trap 'stop_nginx' EXIT
    setup_payload || return 2
    if [ ! -x "$nginx" ] || [ ! -f "$module" ]; then
        echo "FAIL nginx (no carried nginx/module: run tools/gpu-check.sh --prepare and carry build/gpu)"
        return 1
    fi
    if ldd "$nginx" "$module" | grep -q "not found"; then
        ldd "$nginx" "$module" | grep "not found"
        echo "FAIL nginx (libraries missing here)"
        return 1
    fi
    bench=$(prog llm-bench) && serve=$(prog llm-serve-bench) ||
        { echo "FAIL nginx (no llm-bench / llm-serve-bench)"; return 1; }
    for port in $(seq 18300 18400); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
    done
    NGX_PREFIX=$(mktemp -d /tmp/gpu-nginx.XXXXXX)
    mkdir -p "$NGX_PREFIX/logs"
    [ "$(id -u)" = 0 ] && user="user root;"
    cat > "$NGX_PREFIX/nginx.conf" <<EOF
load_module $ROOT/$module;
$user
worker_processes 1;
error_log $NGX_PREFIX/logs/error.log warn;
pid $NGX_PREFIX/logs/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NGX_PREFIX/client_body_temp;
    proxy_temp_path $NGX_PREFIX/proxy_temp;
    fastcgi_temp_path $NGX_PREFIX/fastcgi_temp;
    uwsgi_temp_path $NGX_PREFIX/uwsgi_temp;
    scgi_temp_path $NGX_PREFIX/scgi_temp;
    llm_model qwen3-4b $ROOT/$MODEL4B device=$NGX_DEVICE load_format=dummy kv_cache=${KV_MIB}m max_model_len=1024;
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            llm_pass qwen3-4b;
        }
    }
}
EOF
    cp "$NGX_PREFIX/nginx.conf" "$OUT/nginx.conf"
    echo "nginx: $("$nginx" -v 2>&1), port $port"
    # the module and its engine find libcudart/cublas through LD_LIBRARY_PATH
    if ! "$nginx" -p "$NGX_PREFIX" -c "$NGX_PREFIX/nginx.conf" -e "$NGX_PREFIX/logs/error.log"; then
        tail -n 20 "$NGX_PREFIX/logs/error.log"
        echo "FAIL nginx (nginx did not start)"
        return 1
    fi
    for _ in $(seq 100); do [ -s "$NGX_PREFIX/logs/nginx.pid" ] && break; sleep 0.1; done
    NGX_PID=$(cat "$NGX_PREFIX/logs/nginx.pid" 2>/dev/null)
    local t0=$SECONDS healthy=0
    while [ $((SECONDS - t0)) -lt 120 ]; do
        if http_get "http://127.0.0.1:$port/health"; then healthy=1; break; fi
        kill -0 "$NGX_PID" 2>/dev/null || break
        sleep 0.5
    done
    if [ $healthy = 0 ]; then
        tail -n 20 "$NGX_PREFIX/logs/error.log"
        echo "FAIL nginx (not healthy within 120 s: the worker loads the model)"
        return 1
    fi
    echo "nginx: healthy after $((SECONDS - t0)) s"

    body='{"model":"qwen3-4b","messages":[{"role":"user","content":"Say hello."}],"stream":true,"max_tokens":16}'
    chat_stream "http://127.0.0.1:$port/v1/chat/completions" "$body" > "$OUT/chat-stream.txt" 2>&1
    if grep -q '^data: \[DONE\]' "$OUT/chat-stream.txt" &&
       [ "$(grep -c '"chat.completion.chunk"' "$OUT/chat-stream.txt")" -ge 2 ]; then
        echo "PASS nginx-chat (streaming chat completion on device=$NGX_DEVICE:" \
             "$(grep -c '"chat.completion.chunk"' "$OUT/chat-stream.txt") chunks, [DONE])"
    else
        head -c 1500 "$OUT/chat-stream.txt"; echo
        echo "FAIL nginx-chat (no complete SSE stream; see chat-stream.txt)"
        fails=$((fails + 1))
    fi

    for c in 1 64; do
        n=$([ $c = 1 ] && echo 16 || echo 256)
        timeout 120 "$serve" --base-url "http://127.0.0.1:$port" --model qwen3-4b \
            --tokenizer "$MODEL4B" --endpoint completions --input-len 128 --output-len 128 \
            --num-prompts $n --max-concurrency $c --warmup $([ $c = 1 ] && echo 2 || echo 64) \
            --timeout 60 --json "$OUT/nginx-c$c.json" > "$OUT/nginx-c$c.txt" 2>&1
        r=$?
        grep -E "^(Successful|Failed|Output token|TTFT|TPOT)" "$OUT/nginx-c$c.txt"
        [ $r = 0 ] || { echo "nginx: llm-serve-bench c$c exit status $r"; fails=$((fails + 1)); }
    done
    stop_nginx

    # the same load offline (the engine without nginx), one process each
    for c in 1 64; do
        n=$([ $c = 1 ] && echo 16 || echo 256)
        timeout 120 "$bench" "$MODEL4B" --device "$NGX_DEVICE" --load-format dummy --input-len 128 \
            --output-len 128 --num-prompts $n --concurrency $c \
            --kv-cache-bytes $((KV_MIB * 1048576)) --max-model-len 1024 --json "$OUT/offline-c$c.json" > "$OUT/offline-c$c.txt" 2>&1
        r=$?
        grep -E "^(Successful|Output token|TTFT|TPOT)" "$OUT/offline-c$c.txt"
        [ $r = 0 ] || { tail -n 5 "$OUT/offline-c$c.txt"; echo "nginx: llm-bench c$c exit status $r"; fails=$((fails + 1)); }
        t_off=$(tps "$OUT/offline-c$c.txt")
        t_ngx=$(tps "$OUT/nginx-c$c.txt")
        if [ -n "$t_off" ] && [ -n "$t_ngx" ]; then
            if awk -v a="$t_ngx" -v b="$t_off" 'BEGIN {exit !(b > 0 && a / b >= 0.95)}'; then
                echo "PASS nginx-ratio-c$c (nginx $t_ngx tok/s / offline $t_off tok/s =" \
                     "$(awk -v a="$t_ngx" -v b="$t_off" 'BEGIN {printf "%.1f%%", 100 * a / b}') >= 95%)"
            else
                echo "FAIL nginx-ratio-c$c (nginx $t_ngx tok/s / offline $t_off tok/s =" \
                     "$(awk -v a="$t_ngx" -v b="$t_off" 'BEGIN {printf "%.1f%%", (b > 0 ? 100 * a / b : 0)}') < 95%)"
                fails=$((fails + 1))
            fi
        else
            echo "FAIL nginx-ratio-c$c (no throughput: nginx '${t_ngx}', offline '${t_off}')"
            fails=$((fails + 1))
        fi
    done
    [ $fails = 0 ]
}

case "${1:-}" in
--prepare)
    prepare
    ;;
--nginx)
    nginx_stage
    rc=$?
    [ $rc = 0 ] && echo "PASS nginx" || echo "FAIL nginx (exit $rc)"
    exit $rc
    ;;
--only)
    ONLY=",${2:-},"
    ;;
"")
    ONLY=",correctness,sampling,nginx,bench,memcheck,"
    ;;
*)
    echo "usage: $0 [--prepare | --nginx | --only STAGE,...]" >&2
    exit 2
    ;;
esac

# ---- on the GPU machine: the stages ---------------------------------------------

start=$(date +%s)
deadline=$((start + BUDGET))
RESULTS=()
status=0
say() { echo "== $* ($(($(date +%s) - start)) s)"; }

# stage NAME CAP CMD...: runs CMD with a timeout of CAP seconds or what is
# left of the budget, logs to $OUT/NAME.log, records PASS/FAIL/SKIP
stage() {
    local name=$1 cap=$2 left t rc
    shift 2
    case $ONLY in *",$name,"*) ;; *) return 0 ;; esac
    left=$((deadline - $(date +%s)))
    t=$((cap < left ? cap : left))
    if [ "$t" -lt 20 ]; then
        RESULTS+=("SKIP $name (budget spent: $left s left)")
        echo "${RESULTS[-1]}"
        return 0
    fi
    say "$name (timeout $t s)"
    timeout -k 10 "$t" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    cat "$OUT/$name.log"
    if [ $rc = 0 ]; then
        RESULTS+=("PASS $name")
    elif [ $rc = 124 ] || [ $rc = 137 ]; then
        RESULTS+=("FAIL $name (timed out after $t s)")
        status=1
    elif [ "$name" = memcheck ] && grep -q -i "not supported\|device not supported" "$OUT/$name.log"; then
        RESULTS+=("SKIP $name (compute-sanitizer refuses this device/runtime)")
    else
        RESULTS+=("FAIL $name (exit $rc, log $OUT/$name.log)")
        status=1
    fi
    echo "${RESULTS[-1]}"
}

say "machine"
timeout 20 nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.mem \
    --format=csv 2>&1 | tee "$OUT/gpu.txt"
nvcc --version 2>/dev/null | tail -n 2
setup_payload || exit 2
[ -f "$X/commit.txt" ] && echo "payload of commit $(cat "$X/commit.txt"), tree at $(git rev-parse HEAD 2>/dev/null)"
CHECK=$(prog llm-cuda-check) || { echo "gpu-check: no llm-cuda-check"; exit 2; }
echo "llm-cuda-check: $CHECK"

stage correctness 150 "$CHECK" --no-bench --no-sampling
stage sampling 90 "$CHECK" --sampling
stage nginx 200 "$ROOT/tools/gpu-check.sh" --nginx
stage bench 180 "$CHECK" --bench-only
if command -v compute-sanitizer > /dev/null; then
    stage memcheck 60 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 \
        "$CHECK" --quick
elif [[ $ONLY == *",memcheck,"* ]]; then
    RESULTS+=("SKIP memcheck (compute-sanitizer not found)")
fi

say "summary"
grep -h "^FAILED" "$OUT"/correctness.log "$OUT"/sampling.log "$OUT"/bench.log 2>/dev/null
grep -h "^bench:" "$OUT"/bench.log "$OUT"/sampling.log 2>/dev/null
grep -h "^PASS nginx-\|^FAIL nginx-" "$OUT"/nginx.log 2>/dev/null
printf '%s\n' "${RESULTS[@]}" | tee "$OUT/summary.txt"
echo "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED) in $(($(date +%s) - start)) s" |
    tee -a "$OUT/summary.txt"
# The device tool brings back at most 8 files: the stage logs and the
# summary stay, everything else goes into one archive.
(
    cd "$OUT" || exit 0
    extra=$(ls -p | grep -v / | grep -v -x -E '(correctness|sampling|nginx|bench|memcheck)\.log|summary\.txt|gpu-check-logs\.tar\.gz')
    [ -n "$extra" ] && tar czf gpu-check-logs.tar.gz $extra && rm -f $extra
)
exit $status

#!/bin/bash
# The standard benchmark matrix on the CPU backend (what `make bench` runs).
#
#   tools/bench.sh [BUILD_DIR]          (default: build)
#
# For each model -- the tiny fixture (t/fixtures/tiny-qwen3) and a random
# model of Qwen3-0.6B's shape (load_format=dummy) -- and each concurrency
# (1, 4, 16, 64), it runs the offline engine (BUILD/bin/llm-bench) and the
# same load through nginx with the module (BUILD/bin/llm-serve-bench against
# a server started on a free port under a temporary prefix), BENCH_REPEAT
# times as interleaved pairs: offline r1, nginx r1, offline r2, nginx r2, ...
# A single pair swings by +-12 % on a shared 2-vCPU VM; interleaving puts
# both sides of a pair under the same background load, and bench-report.sh
# takes the median over the pairs.  One server per model stays up across
# the repeats (its worker is idle during the offline runs; runs.tsv records
# the worker's CPU seconds per run to show it; each nginx run's JSON holds
# the worker's and the client's CPU over its measured requests, and each
# offline run's the engine's).  Then the scale check:
# 2,000 concurrent streaming requests on the tiny model, with the worker's
# RSS before, at the peak and after.
#
# Results: bench/results/<UTC date>-<commit>/ (one JSON per run, named
# <offline|nginx>-<model>-c<concurrency>.r<repeat>.json; meta.json with
# machine, commit, repeats, load averages; runs.tsv; bench.log).
# `make bench-report` renders them.
#
# Sizes: one pass of the matrix takes about 1.5 minutes on a quiet 2-core
# machine, so the default BENCH_REPEAT=3 for both models (tiny and q06)
# keeps the whole matrix near 4-5 minutes, well under 12.  Environment
# variables override them:
#   BENCH_MODELS="tiny q06"  BENCH_CONCURRENCY="1 4 16 64"  BENCH_REPEAT=3
#   BENCH_SCALE=2000 (0 skips the scale check)
#   BENCH_WARMUP=c (unmeasured requests before every run, both sides; c:
#                   the row's concurrency)
#   BENCH_THREADS=<CPU threads, default: cores>
#   BENCH_OUT=<results dir>  TEST_NGINX_BINARY=<nginx>  BENCH_KV=<kv_cache>
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=$(cd "${1:-build}" && pwd)
NGINX=${TEST_NGINX_BINARY:-$(command -v nginx || echo /usr/sbin/nginx)}
MODULE=$BUILD/nginx/objs/ngx_http_llm_module.so
OFFLINE=$BUILD/bin/llm-bench
CLIENT=$BUILD/bin/llm-serve-bench
MODELS=${BENCH_MODELS:-tiny q06}
CONCURRENCY=${BENCH_CONCURRENCY:-1 4 16 64}
SCALE=${BENCH_SCALE:-2000}
REPEAT=${BENCH_REPEAT:-3}
# unmeasured requests before each run, on both sides: "c" = the row's
# concurrency (a fresh offline process and a warm server would otherwise
# compare a cold start with a warm one)
WARMUP=${BENCH_WARMUP:-c}
case $WARMUP in
c) ;;
''|*[!0-9]*) echo "bench.sh: BENCH_WARMUP must be c or a number" >&2; exit 2 ;;
esac
case $REPEAT in
''|*[!0-9]*|0) echo "bench.sh: BENCH_REPEAT must be a positive integer" >&2; exit 2 ;;
esac
THREADS=${BENCH_THREADS:-$(nproc)}
# One KV pool size for both sides, large enough that c=64 of the 0.6B
# shape never preempts (28 layers x 8 KV heads x 128 x K+V in float32 is
# 224 KiB a token; 64 x 48 tokens need ~700 MiB).
KV=${BENCH_KV:-1g}
KV_BYTES=$(( ${KV%g} * 1024 * 1024 * 1024 ))

for f in "$MODULE" "$OFFLINE" "$CLIENT" "$NGINX"; do
    [ -x "$f" ] || [ -f "$f" ] || { echo "bench.sh: $f is missing (make all)" >&2; exit 1; }
done

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- src ngx_http_llm_module.c tools 2>/dev/null; then
    COMMIT="$COMMIT-dirty"
fi
STAMP=$(date -u +%Y%m%dT%H%MZ)
OUT=${BENCH_OUT:-bench/results/$STAMP-$COMMIT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/bench.log
: > "$LOG"

say() { echo "bench: $*" | tee -a "$LOG" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---- model table: name, directory, load format, lengths, request counts ---
# Requests per concurrency: enough for a few waves where cheap (tiny), one
# or two waves where a step costs seconds (0.6B shape on 2 cores).
model_dir()    { case $1 in tiny) echo t/fixtures/tiny-qwen3 ;; q06) echo t/fixtures/configs/qwen3-0.6b ;; esac; }
model_format() { case $1 in tiny) echo auto ;; q06) echo dummy ;; esac; }
model_in()     { case $1 in tiny) echo 64 ;; q06) echo 32 ;; esac; }
model_outlen() { case $1 in tiny) echo 64 ;; q06) echo 16 ;; esac; }
model_prompts() {   # model concurrency
    case $1 in
    tiny) case $2 in 1|4) echo 32 ;; 16) echo 64 ;; *) echo $(( $2 * 2 )) ;; esac ;;
    q06)  case $2 in 1) echo 4 ;; 4) echo 8 ;; *) echo "$2" ;; esac ;;
    esac
}

# ---- meta.json: machine, commit, date ---------------------------------------
CPU_MODEL=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
CPUS=$(nproc)
jq -n --arg commit "$COMMIT" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
      --arg cpu "$CPU_MODEL" --argjson cpus "$CPUS" --arg kernel "$(uname -r)" \
      --arg nginx "$("$NGINX" -v 2>&1 | sed 's/.*version: //')" \
      --argjson threads "$THREADS" --arg kv "$KV" --arg load "$(loadavg)" \
      --arg mem "$(free -g | awk '/^Mem:/ {print $2 " GiB"}')" \
      --argjson repeat "$REPEAT" --arg warmup "$WARMUP" \
      '{commit: $commit, date: $date, cpu_model: $cpu, cpus: $cpus, memory: $mem,
        kernel: $kernel, nginx: $nginx, threads: $threads, kv_cache: $kv,
        repeat: $repeat, warmup: $warmup, load_at_start: $load}' > "$OUT/meta.json"
# server_cpu_s: CPU seconds the nginx worker used during the run ("-" when
# no server is up); near 0 for offline runs means the idle server stayed idle
printf 'run\tload_before\tload_after\twall_s\tserver_cpu_s\n' > "$OUT/runs.tsv"

# ---- nginx ----------------------------------------------------------------------
NGX_PREFIX=""
NGX_PID=""
PORT=""

free_port() {
    local p
    for p in $(seq 18080 18180); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "bench.sh: no free port in 18080-18180" >&2
    return 1
}

stop_nginx() {
    if [ -n "$NGX_PID" ] && kill -0 "$NGX_PID" 2>/dev/null; then
        kill -QUIT "$NGX_PID"
        for _ in $(seq 50); do kill -0 "$NGX_PID" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$NGX_PID" 2>/dev/null && kill -TERM "$NGX_PID"
    fi
    if [ -n "$NGX_PREFIX" ]; then
        cp "$NGX_PREFIX/logs/error.log" "$OUT/nginx-error-$1.log" 2>/dev/null || true
        rm -rf "$NGX_PREFIX"
    fi
    NGX_PID=""
    NGX_PREFIX=""
}
trap 'stop_nginx aborted' EXIT

# start_nginx NAME MODEL_DIR FORMAT: one worker (the engine lives in it), a
# connection limit and queue far above the 2,000-connection scale check
start_nginx() {
    local name=$1 dir=$2 format=$3 user=""
    NGX_PREFIX=$(mktemp -d /tmp/llm-bench-nginx.XXXXXX)
    mkdir -p "$NGX_PREFIX/logs" "$NGX_PREFIX/conf"
    PORT=$(free_port)
    [ "$(id -u)" = 0 ] && user="user root;"
    cat > "$NGX_PREFIX/conf/nginx.conf" <<EOF
load_module $MODULE;
$user
worker_processes 1;
worker_rlimit_nofile 16384;
error_log $NGX_PREFIX/logs/error.log warn;
pid $NGX_PREFIX/logs/nginx.pid;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $NGX_PREFIX/client_body_temp;
    proxy_temp_path $NGX_PREFIX/proxy_temp;
    fastcgi_temp_path $NGX_PREFIX/fastcgi_temp;
    uwsgi_temp_path $NGX_PREFIX/uwsgi_temp;
    scgi_temp_path $NGX_PREFIX/scgi_temp;
    llm_model $name $ROOT/$dir threads=$THREADS kv_cache=$KV load_format=$format;
    server {
        listen 127.0.0.1:$PORT backlog=4096;
        location / {
            llm_pass $name;
            llm_queue_size 8192;
        }
    }
}
EOF
    "$NGINX" -p "$NGX_PREFIX" -c "$NGX_PREFIX/conf/nginx.conf" -e "$NGX_PREFIX/logs/error.log" \
        >> "$LOG" 2>&1 || { cat "$NGX_PREFIX/logs/error.log" >&2; return 1; }
    for _ in $(seq 600); do
        [ -s "$NGX_PREFIX/logs/nginx.pid" ] && break
        sleep 0.1
    done
    NGX_PID=$(cat "$NGX_PREFIX/logs/nginx.pid")
    # ready when /health says so (the worker loads the weights first)
    for _ in $(seq 1200); do
        if curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"; then
            return 0
        fi
        kill -0 "$NGX_PID" 2>/dev/null || break
        sleep 0.25
    done
    echo "bench.sh: nginx on port $PORT did not become healthy" >&2
    cat "$NGX_PREFIX/logs/error.log" >&2
    return 1
}

worker_pid() {
    local w
    w=$(awk '{print $1}' "/proc/$NGX_PID/task/$NGX_PID/children" 2>/dev/null)
    echo "${w:-$NGX_PID}"
}

CLK_TCK=$(getconf CLK_TCK)

# worker_cpu_ticks: user + system ticks of the nginx worker, "-" without one
# (the comm field "(nginx: worker process)" holds spaces: cut after the ')')
worker_cpu_ticks() {
    [ -n "$NGX_PID" ] || { echo -; return 0; }
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$(worker_pid)/stat" 2>/dev/null || echo -
}

# run NAME CMD...: one benchmark run, its load, wall time and the server
# worker's CPU time recorded
run() {
    local name=$1 t0 lb la c0 c1 cpu=- rc=0
    shift
    lb=$(loadavg)
    c0=$(worker_cpu_ticks)
    t0=$(date +%s.%N)
    say "$name: $*"
    "$@" >> "$LOG" 2>&1 || rc=$?
    la=$(loadavg)
    c1=$(worker_cpu_ticks)
    if [ "$c0" != - ] && [ "$c1" != - ]; then
        cpu=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / t}')
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$lb" "$la" \
        "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')" "$cpu" >> "$OUT/runs.tsv"
    [ $rc = 0 ] || say "$name: exit status $rc (see $LOG)"
    return 0
}

# ---- the matrix ------------------------------------------------------------------
T_START=$(date +%s)
for m in $MODELS; do
    dir=$(model_dir "$m")
    fmt=$(model_format "$m")
    [ -n "$dir" ] || { echo "bench.sh: unknown model $m (tiny, q06)" >&2; exit 2; }
    in=$(model_in "$m")
    outlen=$(model_outlen "$m")
    dummy=()
    [ "$fmt" = dummy ] && dummy=(--load-format dummy)

    start_nginx "$m" "$dir" "$fmt"
    say "nginx $NGX_PID (worker $(worker_pid)) on port $PORT serving $m"
    for c in $CONCURRENCY; do
        n=$(model_prompts "$m" "$c")
        w=$WARMUP
        [ "$w" = c ] && w=$c
        # interleaved pairs: both sides of pair r see the same background load
        for r in $(seq "$REPEAT"); do
            # prompts never seen before by this server (its prefix cache
            # would answer a repeated prompt's prefill): a seed per row
            # and pair, the warm-up's prompts are that seed's first ones
            seed=$(( c * 1000 + r ))
            run "offline-$m-c$c.r$r" "$OFFLINE" "$dir" "${dummy[@]}" --threads "$THREADS" \
                --kv-cache-bytes "$KV_BYTES" --input-len "$in" --output-len "$outlen" \
                --num-prompts "$n" --concurrency "$c" --warmup "$w" --seed "$seed" \
                --json "$OUT/offline-$m-c$c.r$r.json"
            run "nginx-$m-c$c.r$r" "$CLIENT" --base-url "http://127.0.0.1:$PORT" --model "$m" \
                --tokenizer "$dir" --endpoint completions --input-len "$in" \
                --output-len "$outlen" --num-prompts "$n" --max-concurrency "$c" \
                --warmup "$w" --seed "$seed" --label "nginx-$m-c$c.r$r" --metadata "mode=nginx" --metadata "model_key=$m" \
                --metadata "repeat=$r" --metadata "load=$(loadavg)" --server-pid "$(worker_pid)" \
                --json "$OUT/nginx-$m-c$c.r$r.json"
        done
    done
    if [ "$m" = tiny ] && [ "$SCALE" -gt 0 ]; then
        w=$(worker_pid)
        run "scale-tiny-c$SCALE" "$CLIENT" --base-url "http://127.0.0.1:$PORT" --model "$m" \
            --tokenizer "$dir" --endpoint chat --input-len 16 --output-len 8 \
            --num-prompts "$SCALE" --max-concurrency "$SCALE" --watch-pid "$w" \
            --warmup 300 --timeout 600 --label "scale-tiny-c$SCALE" --metadata "mode=scale" \
            --metadata "model_key=$m" --metadata "load=$(loadavg)" \
            --json "$OUT/scale-tiny-c$SCALE.json"
    fi
    stop_nginx "$m"
done

jq --arg load "$(loadavg)" --argjson wall "$(( $(date +%s) - T_START ))" \
   '. + {load_at_end: $load, wall_s: $wall}' "$OUT/meta.json" > "$OUT/meta.json.tmp" \
   && mv "$OUT/meta.json.tmp" "$OUT/meta.json"
say "results in ${OUT#"$ROOT"/} ($(( $(date +%s) - T_START )) s); make bench-report renders them"

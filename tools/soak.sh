#!/bin/bash
# The soak test (issue #9), what `make soak` runs: nginx with the module on
# the tiny model, on loopback, under BUILD/bin/llm-soak for SOAK_SECONDS:
# concurrent streaming clients, 30% of them dropping their stream at a
# random point, bad requests mixed in, `nginx -s reload` a third of the way
# in, then -- after the load, once the engines are idle -- `nginx -s quit`
# while a batch of streams is in flight.  Then the server side is checked.
#
#   tools/soak.sh [BUILD_DIR]                    (default: build)
#
# Environment (defaults in brackets):
#   SOAK_SECONDS [300]   load phase        SOAK_CLIENTS [500]  concurrent clients
#   SOAK_WORKERS [2]     worker_processes  SOAK_THREADS [1]    engine threads a worker
#   SOAK_QUIT_STREAMS [100]  streams in flight at the quit
#   SOAK_RSS_GROWTH_PCT [10] largest RSS growth of a worker, first vs last
#                        window of its life under load (60 s, or a third of it)
#   SOAK_NICE [15]       nice level of nginx and the client
#   SOAK_SEED [1]        llm-soak's request mix
#   SOAK_OUT [BUILD/soak/<UTC time>]  prefix, logs and results
#   TEST_NGINX_BINARY    nginx (default: nginx on PATH)
#
# Results in SOAK_OUT: soak.json (llm-soak's summary: counts, failures by
# window, metrics and RSS samples), rss.txt (RSS over time), soak.log (the
# client's report), logs/error.log, conf/nginx.conf, checks.txt.
#
# Checks (each prints ok or FAIL, then "N passed, N failed"; the exit status
# is 1 when one failed):
#   no failed request during the load, none around the reload, every
#   completed stream well-formed, bad requests answered with their 4xx and
#   an OpenAI error body, engines back to running 0 / waiting 0 / 0 KV blocks
#   after the load, the quit found streams in flight and lost none, the
#   master exited, no worker crashed (exited on a signal or non-zero), every
#   worker that started exited with code 0 (its exit_process -- which joins
#   the engine threads -- returned), no "open socket ... left in connection"
#   alert, no [alert]/[crit]/[emerg] line, worker RSS flat.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=$(cd "${1:-build}" && pwd)
NGINX=${TEST_NGINX_BINARY:-$(command -v nginx || echo /usr/sbin/nginx)}
MODULE=$BUILD/nginx/objs/ngx_http_llm_module.so
CLIENT=$BUILD/bin/llm-soak
MODEL=$ROOT/t/fixtures/tiny-qwen3
DURATION=${SOAK_SECONDS:-300}
CLIENTS=${SOAK_CLIENTS:-500}
WORKERS=${SOAK_WORKERS:-2}
THREADS=${SOAK_THREADS:-1}
QUIT_STREAMS=${SOAK_QUIT_STREAMS:-100}
RSS_GROWTH=${SOAK_RSS_GROWTH_PCT:-10}
NICE=${SOAK_NICE:-15}
SEED=${SOAK_SEED:-1}
KEY=soak-$$-key
MAX_BODY=262144

for f in "$MODULE" "$CLIENT" "$NGINX"; do
    [ -e "$f" ] || { echo "soak.sh: $f is missing (make all)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "soak.sh: jq is needed (make deps)" >&2; exit 1; }

OUT=${SOAK_OUT:-$BUILD/soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/logs" "$OUT/conf"
OUT=$(cd "$OUT" && pwd)
CONF=$OUT/conf/nginx.conf
ERRLOG=$OUT/logs/error.log
PIDFILE=$OUT/logs/nginx.pid
: > "$ERRLOG"

free_port() {
    local p
    for p in $(seq 18280 18380); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "soak.sh: no free port in 18280-18380" >&2
    return 1
}
PORT=$(free_port)
user=""
[ "$(id -u)" = 0 ] && user="user root;"

# one engine per worker; a queue far above the clients, so that a 429 is a
# failure; a small client_max_body_size keeps the oversize bodies cheap
cat > "$CONF" <<EOF
# written by tools/soak.sh
load_module $MODULE;
$user
worker_processes $WORKERS;
worker_rlimit_nofile 16384;
error_log $ERRLOG notice;
pid $PIDFILE;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $OUT/client_body_temp;
    proxy_temp_path $OUT/proxy_temp;
    fastcgi_temp_path $OUT/fastcgi_temp;
    uwsgi_temp_path $OUT/uwsgi_temp;
    scgi_temp_path $OUT/scgi_temp;
    client_max_body_size $MAX_BODY;
    llm_model tiny $MODEL threads=$THREADS kv_cache=64m;
    server {
        listen 127.0.0.1:$PORT backlog=4096;
        location /v1/ {
            llm_pass tiny;
            llm_queue_size 8192;
            llm_api_key $KEY;
        }
        location = /metrics { llm_pass tiny; }
        location = /health { llm_pass tiny; }
    }
}
EOF

NGX=("$NGINX" -p "$OUT" -c "$CONF" -e "$ERRLOG")
say() { echo "soak: $*" >&2; }

cleanup() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

say "nginx on 127.0.0.1:$PORT, $WORKERS workers, prefix $OUT (load $(cut -d' ' -f1-3 /proc/loadavg))"
nice -n "$NICE" "${NGX[@]}" || { cat "$ERRLOG" >&2; exit 1; }
ready=""
for _ in $(seq 600); do
    # every worker loads its own engine: wait until each says it serves
    if [ "$(grep -c 'serves on' "$ERRLOG" || true)" -ge "$WORKERS" ] \
       && curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"; then
        ready=1
        break
    fi
    sleep 0.25
done
[ -n "$ready" ] || { say "nginx did not become ready"; cat "$ERRLOG" >&2; exit 1; }

say "llm-soak: $CLIENTS clients for $DURATION s"
rc=0
nice -n "$NICE" "$CLIENT" --base-url "http://127.0.0.1:$PORT" --model tiny --api-key "$KEY" \
    --clients "$CLIENTS" --workers "$WORKERS" --duration "$DURATION" --max-body "$MAX_BODY" \
    --seed "$SEED" \
    --pid-file "$PIDFILE" --reload-at "$(( DURATION / 3 ))" \
    --reload-cmd "${NGX[*]} -s reload" --quit-cmd "${NGX[*]} -s quit" \
    --quit-streams "$QUIT_STREAMS" --json "$OUT/soak.json" --table "$OUT/rss.txt" \
    > "$OUT/soak.log" || rc=$?
cat "$OUT/soak.log"
say "llm-soak exit status $rc (load $(cut -d' ' -f1-3 /proc/loadavg))"

# the master should be gone (llm-soak waited for it); if not, that is a
# failed check, and it is stopped here
master_left=0
pid=$(cat "$PIDFILE" 2>/dev/null || true)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    master_left=1
    ps -o pid,stat,etime,cmd --ppid "$pid" >&2 || true
    kill -TERM "$pid" 2>/dev/null || true
fi

# ---- checks ----------------------------------------------------------------------
J=$OUT/soak.json
pass=0
failn=0
: > "$OUT/checks.txt"
check() {   # check NAME CONDITION-EXIT-STATUS DETAIL
    local name=$1 ok=$2 detail=$3 line
    if [ "$ok" = 0 ]; then
        pass=$((pass + 1))
        line="ok    $name ($detail)"
    else
        failn=$((failn + 1))
        line="FAIL  $name ($detail)"
    fi
    echo "$line" | tee -a "$OUT/checks.txt"
}
jqn() { jq -r "$1" "$J" 2>/dev/null || echo "?"; }
is0() { [ "$1" = 0 ] && echo 0 || echo 1; }

if [ ! -s "$J" ]; then
    check "llm-soak wrote its summary" 1 "exit status $rc, no $J"
else
    v=$(jqn '.failures.load')
    check "no failed request during the load" "$(is0 "$v")" "$v failed"
    v=$(jqn '.failures.reload')
    check "no failed request around the reload" "$(is0 "$v")" \
          "$v failed; reload at $(jqn '.reload.at_s | floor') s, exit status $(jqn '.reload.exit_status')"
    v=$(jqn '[.failures.reasons[] | select(.reason | test("malformed"))] | map(.count) | add // 0')
    check "every completed stream and answer well-formed" "$(is0 "$v")" \
          "$v malformed; completed: $(jqn '.completed | to_entries | map("\(.key) \(.value)") | join(", ")')"
    # (outside the reload window: there the check above reports them)
    v=$(jqn '[.failures.reasons[] | select(.window != "reload")
             | select(.reason | test("^[a-z_0-9]+: (HTTP [0-9]+ instead|not an OpenAI|unexpected error|error body)"))]
             | map(.count) | add // 0')
    check "bad requests rejected with their 4xx and an OpenAI error" \
          "$( [ "$v" = 0 ] && [ "$(jqn '.rejected_as_expected.total')" -gt 0 ] && echo 0 || echo 1)" \
          "$(jqn '.rejected_as_expected.total') as expected, $v not"
    check "engines idle after the load (running, waiting, KV blocks 0)" \
          "$( [ "$(jqn '.idle_after_load.ok')" = true ] && echo 0 || echo 1)" \
          "$(jqn '.idle_after_load.workers | map("worker \(.worker): running \(.running) waiting \(.waiting) kv \(.kv_used_blocks)") | join("; ")') after $(jqn '.idle_after_load.after_s * 10 | floor / 10') s"
    v=$(jqn '.quit.in_flight')
    check "quit with streams in flight" "$( [ "$v" != "?" ] && [ "$v" -gt 0 ] && echo 0 || echo 1)" \
          "$v of $(jqn '.quit.streams') in flight"
    v=$(jqn '.quit.lost')
    check "no stream lost at the quit" "$(is0 "$v")" "$v lost, $(jqn '.quit.completed') completed"
    check "master exited after the quit" "$( [ "$master_left" = 0 ] && echo 0 || echo 1)" \
          "after $(jqn '.quit.master_exit_s * 10 | floor / 10') s"
    # RSS: every worker that lived under load for a while (not the ones the
    # reload replaced within the first seconds)
    growth=$(jq -r --argjson skip 30 '[.rss_workers[] | select(.last_s - .first_s >= $skip)
            | "\(.pid): \(.first_window_kb | floor) -> \(.last_window_kb | floor) kB (\(.growth_pct * 10 | floor / 10)%)"] | join("; ")' "$J")
    worst=$(jq -r --argjson skip 30 '[.rss_workers[] | select(.last_s - .first_s >= $skip) | .growth_pct] | max // "none"' "$J")
    check "worker RSS flat (growth <= $RSS_GROWTH% first vs last window)" \
          "$( [ "$worst" != none ] && awk -v g="$worst" -v m="$RSS_GROWTH" 'BEGIN { exit !(g <= m) }' && echo 0 || echo 1)" \
          "${growth:-no worker lived 30 s under load}"
fi

v=$(grep -cE 'exited on signal|worker process [0-9]+ exited with code [1-9]' "$ERRLOG" || true)
check "no worker crash" "$(is0 "$v")" "$v lines: $(grep -E 'exited on signal|exited with code [1-9]' "$ERRLOG" | head -3 | tr '\n' ' ')"
started=$(grep -cE 'start worker process [0-9]+' "$ERRLOG" || true)
exited=$(grep -cE 'worker process [0-9]+ exited with code 0' "$ERRLOG" || true)
# nginx logs a worker's "exit" after the modules' exit_process, where the
# module destroys its engines (llm_engine_destroy joins the engine threads)
noexit=""
for w in $(grep -oE 'start worker process [0-9]+' "$ERRLOG" | awk '{print $4}'); do
    grep -qE "\] $w#$w: exit\$" "$ERRLOG" || noexit="$noexit $w"
done
check "every worker exited with code 0 after exit_process (engine threads joined)" \
      "$( [ "$started" -gt 0 ] && [ "$started" = "$exited" ] && [ -z "$noexit" ] && echo 0 || echo 1)" \
      "$started started, $exited exited with code 0${noexit:+, no exit line from:$noexit}"
v=$(grep -c 'open socket .* left in connection' "$ERRLOG" || true)
check "no \"open socket left\" alert" "$(is0 "$v")" "$v"
v=$(grep -cE '\[(alert|crit|emerg)\]' "$ERRLOG" || true)
check "no [alert]/[crit]/[emerg] line in error_log" "$(is0 "$v")" \
      "$v: $(grep -E '\[(alert|crit|emerg)\]' "$ERRLOG" | head -3 | cut -c1-200 | tr '\n' ' ')"

# nginx's own [error] for the oversize bodies is expected; anything else is not
v=$(grep -E '\[error\]' "$ERRLOG" | grep -vc 'client intended to send too large body' || true)
check "no unexpected [error] line in error_log" "$(is0 "$v")" \
      "$v: $(grep -E '\[error\]' "$ERRLOG" | grep -v 'client intended to send too large body' | head -3 | cut -c1-200 | tr '\n' ' ')"

echo "soak: results in ${OUT#"$ROOT"/}"
echo "$pass passed, $failn failed"
[ "$failn" = 0 ]

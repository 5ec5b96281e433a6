#!/bin/sh
# make run: serve a model with the system nginx and the built module.
#
#   tools/run-server.sh MODULE_SO MODEL_DIR [DEVICE] [PORT]
#
# Writes a configuration under build/run/ (prefix, logs, temp paths) and
# runs nginx in the foreground: http://127.0.0.1:PORT/v1/... (OpenAI API),
# /health, /metrics, /tokenize, /detokenize.  Ctrl-C stops it.
# Environment: NGINX (nginx binary, default nginx from PATH), MODEL_NAME
# (served model name, default the directory's name), LLM_OPTIONS (extra
# llm_model options, e.g. "max_model_len=8192 kv_cache=0.9").
set -e

if [ $# -lt 2 ]; then
    echo "usage: $0 MODULE_SO MODEL_DIR [DEVICE] [PORT]" >&2
    exit 2
fi
module=$1
model=$2
device=${3:-cpu}
port=${4:-8000}
nginx=${NGINX:-nginx}
name=${MODEL_NAME:-$(basename "$model")}

cd "$(dirname "$0")/.."
prefix=$(pwd)/build/run

if [ ! -f "$module" ]; then
    echo "$module does not exist: run 'make module' first" >&2
    exit 1
fi
if [ ! -f "$model/config.json" ]; then
    echo "$model is not a model directory (no config.json)" >&2
    exit 1
fi
if ! command -v "$nginx" >/dev/null 2>&1; then
    echo "nginx not found (make deps, or set NGINX=)" >&2
    exit 1
fi

mkdir -p "$prefix/logs" "$prefix/tmp"
conf=$prefix/nginx.conf
cat > "$conf" <<CONF
# written by tools/run-server.sh; edit the script, not this file
load_module $module;
worker_processes 1;
pid $prefix/logs/nginx.pid;
error_log stderr notice;
events { worker_connections 1024; }
http {
    access_log $prefix/logs/access.log;
    client_body_temp_path $prefix/tmp/body;
    proxy_temp_path $prefix/tmp/proxy;
    fastcgi_temp_path $prefix/tmp/fastcgi;
    uwsgi_temp_path $prefix/tmp/uwsgi;
    scgi_temp_path $prefix/tmp/scgi;
    client_max_body_size 16m;
    client_body_buffer_size 1m;

    types { text/html html; text/css css; text/javascript js; }
    default_type application/octet-stream;
    charset utf-8;
    charset_types text/css text/javascript;

    llm_model $name $model device=$device ${LLM_OPTIONS:-};

    server {
        listen 127.0.0.1:$port;
        # the chat page at /, the API next to it
        location / { root $(pwd)/ui; add_header Cache-Control no-cache; }
        location /v1/ { llm_pass $name; }
        location ~ ^/(health|metrics|tokenize|detokenize|version)\$ { llm_pass $name; }
    }
}
CONF

"$nginx" -t -q -p "$prefix" -c "$conf" -e "$prefix/logs/error.log"

cat <<MSG
Serving $model as "$name" on $device: http://127.0.0.1:$port  (config: $conf)
Chat page: http://127.0.0.1:$port/
Try:
  curl http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"$name","messages":[{"role":"user","content":"Hello!"}],"max_tokens":32}'
  curl -N http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"$name","messages":[{"role":"user","content":"Hello!"}],"stream":true}'
Health: curl -i http://127.0.0.1:$port/health (503 while the weights load)
MSG

exec "$nginx" -p "$prefix" -c "$conf" -e "$prefix/logs/error.log" \
     -g 'daemon off; master_process on;'

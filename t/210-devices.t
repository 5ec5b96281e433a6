# One GPU per worker: device=cuda gives worker i GPU i, devices=0,2,3 gives
# worker i the i-th entry.  A list shorter than worker_processes, a device
# pinned with several workers and malformed device strings fail the
# configuration with a message that says so.  (These run without a GPU:
# with master_process off the single process is worker 0.)
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
workers(3);
log_level('info');
run_tests();

__DATA__

=== TEST 1: devices= with fewer entries than workers
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR devices=0,1;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model "tiny": devices= lists 2 GPU(s) but worker_processes is 3



=== TEST 2: one pinned GPU with several workers
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR device=cuda:1;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model "tiny": device=cuda:1 pins one GPU but worker_processes is 3



=== TEST 3: an entry that is not a GPU index
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR devices=0,gpu1,2;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model: invalid devices="0,gpu1,2": "gpu1" is not a GPU index



=== TEST 4: an empty entry
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR devices=0,,2;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model: invalid devices="0,,2": "" is not a GPU index



=== TEST 5: an empty list
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR devices=;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model: invalid devices="": "" is not a GPU index



=== TEST 6: a GPU listed twice
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR devices=0,cuda:2,2;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model: invalid devices="0,cuda:2,2": GPU 2 is listed twice (a GPU belongs to one worker)



=== TEST 7: devices= with device=cpu
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR device=cpu devices=0,1,2;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model "tiny": devices= gives each worker a GPU and cannot go with device=cpu



=== TEST 8: bad device strings
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR device=gpu0;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model: invalid device="gpu0" (cpu, cuda or cuda:N)



=== TEST 9: a cuda: without a number
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR device=cuda:x;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model: invalid device="cuda:x" (cpu, cuda or cuda:N)



=== TEST 10: llm_prefix_key_bytes must be positive
--- http_config
    llm_prefix_key_bytes 0;
--- config
    location /v1/ { return 200; }
--- must_die
--- error_log
"llm_prefix_key_bytes" must be at least 1



=== TEST 11: CPU engines are unaffected by the worker count; the device is logged and labels /metrics
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass tiny; }
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n
--- error_log
llm_model "tiny": worker 0 loads on cpu
llm_model "tiny": worker 0 serves on cpu
--- no_error_log
[error]



=== TEST 12: a GPU the worker cannot open: error_log names it, /health answers 503 with the reason
--- skip_eval: 4: -e "/proc/driver/nvidia/gpus/" && glob("/proc/driver/nvidia/gpus/*")
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR devices=3,1,2 kv_cache=16m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_poll('/v1/health', qr/model_failed/, 30);
--- request
GET /v1/health
--- error_code: 503
--- response_body_like: "code":"model_failed"
--- error_log eval
[qr/llm_model "tiny": worker 0 loads on cuda:3/,
 qr/\[error\] .*llm_model "tiny": worker 0 failed to load on cuda:3: /]

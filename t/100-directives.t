# Directives: llm_model options are checked at configuration time (nginx -t
# names the problem); llm_pass; llm_api_key and the other location settings
# inherit http -> server -> location.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: a directory without a model fails the configuration, naming the file
--- http_config
    llm_model tiny /nonexistent/model/dir;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log eval
qr/\[emerg\] .*llm_model "tiny": .*\/nonexistent\/model\/dir.*config\.json/



=== TEST 2: an unknown option
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR colour=blue;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model: unknown option "colour"



=== TEST 3: an option that is not NAME=VALUE
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR fast;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
llm_model: option "fast" is not NAME=VALUE



=== TEST 4: invalid values
--- http_config
    llm_model a $TEST_NGINX_MODEL_DIR kv_cache=lots;
--- config
    location /v1/ { llm_pass a; }
--- must_die
--- error_log
llm_model: invalid kv_cache="lots"



=== TEST 5: a kv_cache fraction above 1
--- http_config
    llm_model a $TEST_NGINX_MODEL_DIR kv_cache=1.5;
--- config
    location /v1/ { llm_pass a; }
--- must_die
--- error_log
llm_model: invalid kv_cache="1.5"



=== TEST 6: an unknown device
--- http_config
    llm_model a $TEST_NGINX_MODEL_DIR device=tpu;
--- config
    location /v1/ { llm_pass a; }
--- must_die
--- error_log
llm_model: invalid device="tpu" (cpu, cuda or cuda:N)



=== TEST 7: a negative thread count
--- http_config
    llm_model a $TEST_NGINX_MODEL_DIR threads=-1;
--- config
    location /v1/ { llm_pass a; }
--- must_die
--- error_log
llm_model: invalid threads="-1"



=== TEST 8: a bad load_format
--- http_config
    llm_model a $TEST_NGINX_MODEL_DIR load_format=gguf;
--- config
    location /v1/ { llm_pass a; }
--- must_die
--- error_log
llm_model: invalid load_format="gguf" (auto or dummy)



=== TEST 9: llm_pass names a model that does not exist
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR;
--- config
    location /v1/ { llm_pass qwen; }
--- must_die
--- error_log
llm_pass: no "llm_model qwen" in the http block



=== TEST 10: a model name used twice
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR;
    llm_model tiny $TEST_NGINX_MODEL_DIR;
--- config
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
"llm_model" directive names a model twice



=== TEST 11: llm_model belongs to the http block
--- config
    llm_model tiny $TEST_NGINX_MODEL_DIR;
    location /v1/ { llm_pass tiny; }
--- must_die
--- error_log
"llm_model" directive is not allowed here



=== TEST 12: a missing key file
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR;
--- config
    location /v1/ { llm_pass tiny; llm_api_key file=/nonexistent/keys; }
--- must_die
--- error_log
llm_api_key: cannot open "/nonexistent/keys"



=== TEST 13: every llm_model option, and llm_model after the server that uses it
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { llm_pass late; }
    }
    llm_model late $TEST_NGINX_MODEL_DIR device=cpu threads=1 max_model_len=512
              max_num_seqs=4 max_num_batched_tokens=256 kv_cache=16m
              tokenizer=$TEST_NGINX_MODEL_DIR served_name=late-model
              load_format=auto prefix_caching=off seed=3;
--- config
    location /v1/ { llm_pass late; }
--- request
GET /v1/models
--- json_check
$j->{data}[0]{id} eq 'late-model' && $j->{data}[0]{max_model_len} == 512
--- no_error_log
[error]



=== TEST 14: load_format=dummy serves random weights of the configured shape
--- http_config
    llm_model rnd $TEST_NGINX_MODEL_DIR load_format=dummy threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass rnd; }
--- request
POST /v1/completions
{"prompt":"Hi","max_tokens":3,"ignore_eos":true}
--- json_check
$j->{usage}{completion_tokens} == 3
--- no_error_log
[error]



=== TEST 15: llm_api_key: inherited from http, off in a location, from a file
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=16m;
    llm_api_key sk-http-level;
--- config
    location /v1/ { llm_pass tiny; }
    location /open/v1/ { llm_pass tiny; llm_api_key off; }
    location /file/v1/ { llm_pass tiny; llm_api_key file=$TEST_NGINX_HTML_DIR/keys.txt; }
--- user_files
>>> keys.txt
# one key a line
sk-one

  sk-two  
--- request eval
["GET /v1/models", "GET /v1/models", "GET /v1/models", "GET /v1/health",
 "GET /open/v1/models", "GET /file/v1/models", "GET /file/v1/models",
 "POST /v1/chat/completions\n{}"]
--- more_headers eval
["", "Authorization: Bearer sk-http-level", "Authorization: Bearer sk-wrong", "",
 "", "Authorization: Bearer sk-two", "Authorization: Bearer sk-http-level", ""]
--- error_code eval
[401, 200, 401, 200, 200, 200, 401, 401]
--- response_body_like eval
['"code":"invalid_api_key"', '"object":"list"', '"Incorrect API key provided"', '^$',
 '"object":"list"', '"object":"list"', '"invalid_api_key"', '"invalid_api_key"']
--- no_error_log
[error]



=== TEST 16: llm_request_timeout ends a generation that takes too long
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    llm_request_timeout 300ms;
    location /v1/ { llm_pass tiny; }
--- request eval
["POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":30000,"ignore_eos":true}',
 "POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":30000,"ignore_eos":true,"stream":true}']
--- error_code eval
[504, 200]
--- response_body_like eval
['"type":"timeout_error"', 'data: \{"error":\{"message":"the request did not finish within llm_request_timeout.*"code":504\}\}\n\ndata: \[DONE\]\n\n$']
--- no_error_log
[error]



=== TEST 17: a bad precision
--- http_config
    llm_model a $TEST_NGINX_MODEL_DIR precision=half;
--- config
    location /v1/ { llm_pass a; }
--- must_die
--- error_log
llm_model: invalid precision="half" (exact or fast)



=== TEST 18: precision=fast serves the same API (bf16 activations on the CPU, and by default a bf16 KV cache)
--- http_config
    llm_model f $TEST_NGINX_MODEL_DIR precision=fast threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass f; }
--- request
POST /v1/completions
{"prompt":"Hello","max_tokens":4,"ignore_eos":true,"temperature":0}
--- json_check
$j->{usage}{completion_tokens} == 4 && $j->{choices}[0]{finish_reason} eq 'length'
--- error_log
llm_model "f": worker 0 serves on cpu (4096 KV blocks of 16 tokens, bfloat16)
--- no_error_log
[error]



=== TEST 19: a bad kv_cache_dtype
--- http_config
    llm_model a $TEST_NGINX_MODEL_DIR kv_cache_dtype=fp8;
--- config
    location /v1/ { llm_pass a; }
--- must_die
--- error_log
llm_model: invalid kv_cache_dtype="fp8" (auto, float32 or bfloat16)



=== TEST 20: kv_cache_dtype=float32 is CPU only
--- http_config
    llm_model g $TEST_NGINX_MODEL_DIR device=cuda kv_cache_dtype=float32;
--- config
    location /v1/ { llm_pass g; }
--- must_die
--- error_log
llm_model "g": kv_cache_dtype=float32 is CPU only (device=cuda keeps the KV cache in bfloat16)



=== TEST 21: kv_cache_dtype=bfloat16 on the CPU: twice the blocks in the same kv_cache, same API
--- http_config
    llm_model h $TEST_NGINX_MODEL_DIR kv_cache_dtype=bfloat16 threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass h; }
--- request
POST /v1/completions
{"prompt":"Hello","max_tokens":4,"ignore_eos":true,"temperature":0}
--- json_check
$j->{usage}{completion_tokens} == 4 && $j->{choices}[0]{finish_reason} eq 'length'
--- error_log
llm_model "h": worker 0 serves on cpu (4096 KV blocks of 16 tokens, bfloat16)
--- no_error_log
[error]



=== TEST 22: kv_cache_dtype=auto on the CPU is float32 with the exact precision
--- http_config
    llm_model h $TEST_NGINX_MODEL_DIR kv_cache_dtype=auto threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass h; }
--- request
POST /v1/completions
{"prompt":"Hello","max_tokens":2,"ignore_eos":true,"temperature":0}
--- json_check
$j->{usage}{completion_tokens} == 2
--- error_log
llm_model "h": worker 0 serves on cpu (2048 KV blocks of 16 tokens, float32)
--- no_error_log
[error]



=== TEST 23: /metrics names the KV cache's type and size (vLLM's cache_config_info)
--- http_config
    llm_model h $TEST_NGINX_MODEL_DIR kv_cache_dtype=bfloat16 threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass h; }
--- request eval
["POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":1}',
 "GET /v1/metrics"]
--- response_body_like eval
['"text_completion"',
 'llm:cache_config_info\{model_name="h",device="cpu",worker="0",block_size="16",cache_dtype="bfloat16",num_blocks="4096"\} 1\n']
--- no_error_log
[error]



=== TEST 24: precision=fast kv_cache_dtype=float32 keeps an f32 cache
--- http_config
    llm_model f $TEST_NGINX_MODEL_DIR precision=fast kv_cache_dtype=float32 threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass f; }
--- request
POST /v1/completions
{"prompt":"Hello","max_tokens":2,"ignore_eos":true,"temperature":0}
--- json_check
$j->{usage}{completion_tokens} == 2
--- error_log
llm_model "f": worker 0 serves on cpu (2048 KV blocks of 16 tokens, float32)
--- no_error_log
[error]

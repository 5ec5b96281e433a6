# GET .../models, /health, /metrics, /version, POST /tokenize, /detokenize;
# dispatch on the URI's final segments under any location.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
no_root_location();
log_level('info');
run_tests();

__DATA__

=== TEST 1: the models list has the served model with max_model_len
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m max_model_len=2048;
--- config
    location / { llm_pass tiny; }
--- ready_path: /health
--- request
GET /v1/models
--- response_headers
Content-Type: application/json
--- json_check
$j->{object} eq 'list' && @{$j->{data}} == 1 && $j->{data}[0]{id} eq 'tiny'
&& $j->{data}[0]{object} eq 'model' && $j->{data}[0]{max_model_len} == 2048
&& $j->{data}[0]{owned_by} && $j->{data}[0]{created} > 0
--- no_error_log
[error]



=== TEST 2: one model, and an unknown one
--- request eval
["GET /v1/models/tiny", "GET /v1/models/other",
 "GET /v1/models/" . ('a' x 199) . "%C3%A9"]
--- error_code eval
[200, 404, 404]
--- json_check
$idx == 0 ? $j->{id} eq 'tiny' && $j->{object} eq 'model'
: $idx == 1 ? $j->{error}{code} eq 'model_not_found'
: $j->{error}{code} eq 'model_not_found'
  && $j->{error}{message} =~ /'a{199}'/
--- no_error_log
[error]



=== TEST 3: HEAD on models
--- request
HEAD /v1/models
--- response_body
--- no_error_log
[error]



=== TEST 4: health is 200 with an empty body once the model is loaded
--- request
GET /health
--- response_body
--- no_error_log
[error]



=== TEST 5: tokenize a prompt (vLLM's shape)
--- request
POST /tokenize
{"model":"tiny","prompt":"Hello world"}
--- json_check
$j->{count} == 2 && "@{$j->{tokens}}" eq '9707 1879' && $j->{max_model_len} == 2048
--- no_error_log
[error]



=== TEST 6: tokenize with token strings, and without special tokens
--- request
POST /tokenize
{"prompt":"Hello world","return_token_strs":true,"add_special_tokens":false}
--- json_check
"@{$j->{token_strs}}" eq 'Hello  world'
--- no_error_log
[error]



=== TEST 7: tokenize messages renders the chat template
--- request
POST /tokenize
{"messages":[{"role":"user","content":"Hello"}],"add_generation_prompt":true}
--- json_check
$j->{count} == @{$j->{tokens}} && $j->{tokens}[0] == 151644 && $j->{tokens}[-3] == 151644
--- no_error_log
[error]



=== TEST 8: detokenize
--- request
POST /detokenize
{"tokens":[9707,1879]}
--- response_body chomp
{"prompt":"Hello world"}
--- no_error_log
[error]



=== TEST 9: tokenize and detokenize errors
--- request eval
["POST /tokenize\n{}", "POST /detokenize\n{\"tokens\":\"x\"}", "POST /detokenize\n{\"tokens\":[999999999]}", "GET /tokenize"]
--- error_code eval
[400, 400, 400, 405]
--- json_check
length $j->{error}{message}
--- no_error_log
[error]



=== TEST 10: metrics in Prometheus text with vLLM's names
--- request eval
["POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"ignore_eos":true}',
 "GET /metrics"]
--- response_headers eval
["Content-Type: application/json", "Content-Type: text/plain; version=0.0.4; charset=utf-8"]
--- response_body_like eval
['chat.completion', CORE::join('.*',
  '# TYPE llm:num_requests_running gauge\nllm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n',
  '# TYPE llm:num_requests_waiting gauge\nllm:num_requests_waiting\{model_name="tiny",device="cpu",worker="0"\} 0\n',
  'llm:kv_cache_usage_perc\{model_name="tiny",device="cpu",worker="0"\} [\d.e-]+\n',
  '# TYPE llm:cache_config_info gauge\nllm:cache_config_info\{model_name="tiny",device="cpu",worker="0",block_size="16",cache_dtype="float32",num_blocks="[1-9]\d*"\} 1\n',
  'llm:prefix_cache_queries_total\{model_name="tiny",device="cpu",worker="0"\} \d+\n',
  'llm:prefix_cache_hits_total\{model_name="tiny",device="cpu",worker="0"\} \d+\n',
  'llm:num_preemptions_total\{model_name="tiny",device="cpu",worker="0"\} 0\n',
  'llm:prompt_tokens_total\{model_name="tiny",device="cpu",worker="0"\} [1-9]\d*\n',
  'llm:generation_tokens_total\{model_name="tiny",device="cpu",worker="0"\} [3-9]\d*\n',
  '# TYPE llm:time_to_first_token_seconds histogram\n',
  'llm:time_to_first_token_seconds_bucket\{model_name="tiny",device="cpu",worker="0",le="\+Inf"\} [1-9]\d*\n',
  'llm:time_to_first_token_seconds_count\{model_name="tiny",device="cpu",worker="0"\} [1-9]',
  '# TYPE llm:inter_token_latency_seconds histogram\n',
  '# TYPE llm:e2e_request_latency_seconds histogram\n',
  'llm:e2e_request_latency_seconds_sum\{model_name="tiny",device="cpu",worker="0"\} [\d.e-]+\n',
  'llm:request_success_total\{model_name="tiny",device="cpu",worker="0",finished_reason="length"\} [1-9]')]
--- no_error_log
[error]



=== TEST 11: version
--- request
GET /version
--- response_body_like: ^\{"version":"[0-9.]+"\}$
--- no_error_log
[error]



=== TEST 12: exact-match and prefixed locations dispatch on the final segments
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location = /api/health { llm_pass tiny; }
    location /openai/v1/ { llm_pass tiny; }
    location = /chat/completions { llm_pass tiny; }
--- ready_path: /api/health
--- request eval
["GET /openai/v1/models", "POST /chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}',
 "GET /openai/v1/health", "GET /openai/v1/unknown"]
--- error_code eval
[200, 200, 200, 404]
--- response_body_like eval
['"object":"list"', '"chat.completion"', '^$', '"not_found"']
--- no_error_log
[error]

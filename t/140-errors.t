# Every error case answers with the right status and an OpenAI error body
# {"error": {"message", "type", "param", "code"}}, and never disturbs other
# requests.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: invalid JSON
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m max_model_len=64 max_num_seqs=1;
--- config
    location /v1/ { llm_pass tiny; llm_queue_size 1; client_max_body_size 4k; }
--- request
POST /v1/chat/completions
{"messages": [
--- error_code: 400
--- response_headers
Content-Type: application/json
--- json_check
$j->{error}{type} eq 'invalid_request_error' && $j->{error}{code} eq 'invalid_json'
&& exists $j->{error}{param} && length $j->{error}{message}
--- no_error_log
[error]



=== TEST 2: a body that is not an object, and an empty body
--- request eval
["POST /v1/chat/completions\n[1,2]", "POST /v1/chat/completions\n", "POST /v1/completions\n\"x\""]
--- error_code eval
[400, 400, 400]
--- json_check
$j->{error}{code} eq 'invalid_json'
--- no_error_log
[error]



=== TEST 3: wrong field types name the field
--- request eval
my @b = (
  '{"messages":"hello"}',
  '{"messages":[{"role":"user","content":7}]}',
  '{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}',
  '{"messages":[{"role":"user","content":"x"}],"max_tokens":"10"}',
  '{"messages":[{"role":"user","content":"x"}],"stream":"yes"}',
  '{"messages":[{"role":"user","content":"x"}],"stop":5}',
  '{"messages":[{"role":"user","content":"x"}],"n":1.5}',
  '{"messages":[{"role":"user","content":"x"}],"logit_bias":[1]}',
  '{"messages":[{"role":"user","content":"x"}],"model":42}',
);
[map { "POST /v1/chat/completions\n$_" } @b]
--- error_code eval
[(400) x 9]
--- json_check
my @params = qw(messages messages[0].content temperature max_tokens stream stop n logit_bias model);
$j->{error}{param} eq $params[$idx] && $j->{error}{type} eq 'invalid_request_error'
--- no_error_log
[error]



=== TEST 4: invalid values: empty messages, unknown role, out-of-range sampling, max_tokens <= 0
--- request eval
my @b = (
  '{"messages":[]}',
  '{}',
  '{"messages":[{"role":"wizard","content":"x"}]}',
  '{"messages":[{"role":"user","content":"x"}],"temperature":2.5}',
  '{"messages":[{"role":"user","content":"x"}],"temperature":-1}',
  '{"messages":[{"role":"user","content":"x"}],"top_p":1.5}',
  '{"messages":[{"role":"user","content":"x"}],"max_tokens":0}',
  '{"messages":[{"role":"user","content":"x"}],"max_tokens":-3}',
  '{"messages":[{"role":"user","content":"x"}],"n":0}',
  '{"messages":[{"role":"user","content":"x"}],"top_logprobs":2}',
  '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}',
  '{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}',
);
[map { "POST /v1/chat/completions\n$_" } @b]
--- error_code eval
[(400) x 12]
--- json_check
my @params = ('messages', 'messages', 'messages[0].role', 'temperature', 'temperature',
              'top_p', 'max_tokens', 'max_tokens', 'n', 'top_logprobs',
              'messages[0].content[0]', 'stream_options');
$j->{error}{param} eq $params[$idx] && length $j->{error}{message}
--- no_error_log
[error]



=== TEST 5: completions: bad prompt, bad logprobs
--- request eval
my @b = ('{}', '{"prompt":[]}', '{"prompt":{"a":1}}', '{"prompt":"x","logprobs":true}',
         '{"prompt":"x","logprobs":50}', '{"prompt":"x","echo":"yes"}');
[map { "POST /v1/completions\n$_" } @b]
--- error_code eval
[(400) x 6]
--- json_check
my @params = qw(prompt prompt prompt logprobs logprobs echo);
$j->{error}{param} eq $params[$idx]
--- no_error_log
[error]



=== TEST 6: prompt + max_tokens over max_model_len: 400 stating both numbers
--- request eval
["POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":60}',
 "POST /v1/completions\n" . '{"prompt":"' . ('word ' x 80) . '","max_tokens":1}']
--- error_code eval
[400, 400]
--- json_check
$j->{error}{type} eq 'invalid_request_error' && $j->{error}{message} =~ /\b64\b/
&& ($idx == 0 ? $j->{error}{message} =~ /\b60\b/ : $j->{error}{message} =~ /\b8[01]\b/)
--- no_error_log
[error]



=== TEST 7: a streamed request with a bad prompt still gets a 400 JSON, not a stream
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":60,"stream":true}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- json_check
$j->{error}{message} =~ /64/
--- no_error_log
[error]



=== TEST 8: unknown model
--- request
POST /v1/completions
{"model":"davinci","prompt":"x"}
--- error_code: 404
--- json_check
$j->{error}{code} eq 'model_not_found' && $j->{error}{param} eq 'model'



=== TEST 9: unknown route and wrong method
--- request eval
["GET /v1/engines", "GET /v1/chat/completions", "DELETE /v1/models", "POST /v1/models\n{}"]
--- error_code eval
[404, 405, 405, 405]
--- response_headers eval
["!Allow", "Allow: POST", "Allow: GET, HEAD", "Allow: GET, HEAD"]
--- json_check
$idx == 0 ? $j->{error}{code} eq 'not_found' : $j->{error}{code} eq 'method_not_allowed'
--- no_error_log
[error]



=== TEST 10: a body over client_max_body_size is a 413 with a JSON body
--- request eval
"POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"' . ('x' x 5000) . '"}]}'
--- error_code: 413
--- response_headers
Content-Type: application/json
--- json_check
$j->{error}{code} eq 'request_too_large' && $j->{error}{message} =~ /client_max_body_size/



=== TEST 11: the same for a chunked body
--- more_headers
Transfer-Encoding: chunked
--- request eval
my $body = '{"messages":[{"role":"user","content":"' . ('x' x 5000) . '"}]}';
"POST /v1/chat/completions\n" . sprintf("%x\r\n%s\r\n0\r\n\r\n", length $body, $body)
--- error_code: 413
--- response_headers
Content-Type: application/json
--- json_check
$j->{error}{code} eq 'request_too_large'



=== TEST 12: a failed request disturbs no other request
--- pipelined_requests eval
["POST /v1/chat/completions\n{bad json",
 "POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}',
 "POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":99}',
 "POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"stream":true}']
--- error_code eval
[400, 200, 400, 200]
--- response_body_like eval
['"invalid_json"', '"chat.completion"', 'maximum context length', 'data: \[DONE\]']
--- no_error_log
[error]



=== TEST 13: a full queue is a 429 with Retry-After
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m max_num_seqs=1;
--- config
    location /v1/ { llm_pass tiny; llm_queue_size 1; }
--- init
main::llm_wait_ready('/v1/health');
# max_num_seqs=1 and llm_queue_size 1: one long request runs, one waits
my $long = '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":30000,"ignore_eos":true,"stream":true}';
my $long2 = '{"prompt":"Hi","max_tokens":30000,"ignore_eos":true}';
main::llm_hold_request(main::llm_post('/v1/chat/completions', $long));
main::llm_poll('/v1/metrics', qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 1\n/);
main::llm_hold_request(main::llm_post('/v1/completions', $long2));
main::llm_poll('/v1/metrics', qr/llm:num_requests_waiting\{model_name="tiny",device="cpu",worker="0"\} 1\n/);
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}
--- error_code: 429
--- response_headers
Retry-After: 1
--- json_check
$j->{error}{code} eq 'rate_limit_exceeded'



=== TEST 14: the queue drains: the waiting requests' clients go away
--- init
$_->close for splice @main::LlmHeldSockets;
# both gone: running 0 alone can be the moment between the running
# request's end and the waiting one's start, with the queue still full
main::llm_poll('/v1/metrics', qr/\A(?=.*?llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n)(?=.*?llm:num_requests_waiting\{model_name="tiny",device="cpu",worker="0"\} 0\n)/s);
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}
--- error_code: 200



=== TEST 15: a model that cannot start: 503 for requests and /health
--- http_config
    llm_model broken $TEST_NGINX_MODEL_DIR device=cuda:7;
--- config
    location /v1/ { llm_pass broken; }
--- init
# nothing to wait for: the engine never comes up
--- request eval
["POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}]}', "GET /v1/health"]
--- error_code eval
[503, 503]
--- response_headers eval
["Retry-After: 1", "Content-Type: application/json"]
--- json_check
$j->{error}{type} eq 'service_unavailable_error' && length $j->{error}{message}

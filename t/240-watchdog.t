# The worker's watchdog and a failed engine.  LLM_TEST_FAULT (src/llm.h)
# makes the engine hang after N steps or fail every forward pass; nginx
# clears the environment unless `env` lists it.
#
# Single process (master_process off, the harness's default): nothing could
# start a fresh worker, so the broken engine keeps answering 503 and the
# blocks can check that without racing a restart.  The replacement of a
# worker under a master is in t/190-shutdown.t.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: a stream on an engine that stops making progress ends with an error event
--- main_config
    env LLM_TEST_FAULT=hang_after_steps=3;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m watchdog=2s;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}],"max_tokens":100,"ignore_eos":true,"stream":true}
--- timeout: 30
--- response_body_like: ^data: \{"id":"chatcmpl-.*\n\ndata: \{"error":\{"message":"the engine made no progress for [0-9.]+ s with requests in flight \(watchdog=2000ms, 3 steps done\)","type":"service_unavailable_error","param":null,"code":503\}\}\n\ndata: \[DONE\]\n\n$
--- error_log eval
qr/\[alert\].*llm_model "tiny": the engine made no progress for [0-9.]+ s with requests in flight \(watchdog=2000ms, 3 steps done\); 1 requests failed, answering 503 until nginx is restarted/



=== TEST 2: /health answers 503 with the reason
# its own server (a block that reuses one is restarted under valgrind, with
# the configuring block's init run again): the init stalls the engine
--- main_config
    env LLM_TEST_FAULT=hang_after_steps=3;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m watchdog=2s;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
main::llm_hold_request(main::llm_post('/v1/completions', '{"prompt":"Hi","max_tokens":100,"ignore_eos":true}'));
main::llm_poll('/v1/health', qr/^HTTP\/1\.\d 503/, 30);
$_->close for splice @main::LlmHeldSockets;
--- request
GET /v1/health
--- error_code: 503
--- json_check
$j->{error}{code} eq 'model_failed' && $j->{error}{message} =~ /made no progress/
--- error_log eval
qr/\[alert\].*the engine made no progress .*; 1 requests failed, answering 503/



=== TEST 3: a new request is refused with 503 at once
--- request
POST /v1/completions
{"prompt":"Hi","max_tokens":1}
--- error_code: 503
--- json_check
$j->{error}{type} eq 'service_unavailable_error'
&& $j->{error}{message} =~ /^the engine made no progress/



=== TEST 4: a non-streaming request in flight gets a 503 JSON error
--- main_config
    env LLM_TEST_FAULT=hang_after_steps=3;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m watchdog=2s;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
--- request
POST /v1/completions
{"prompt":"Hi","max_tokens":100,"ignore_eos":true,"n":2}
--- timeout: 30
--- error_code: 503
--- json_check
$j->{error}{code} eq 'model_failed' && $j->{error}{message} =~ /made no progress/
--- error_log eval
qr/\[alert\].*; 1 requests failed, answering 503/



=== TEST 5: llm_request_timeout does not wait for the (hung) engine to acknowledge the cancel
--- main_config
    env LLM_TEST_FAULT=hang_after_steps=3;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m watchdog=600s;
--- config
    location /v1/ { llm_pass tiny; llm_request_timeout 1s; }
--- init
main::llm_wait_ready('/v1/health');
--- request eval
["POST /v1/completions\n{\"prompt\":\"Hi\",\"max_tokens\":100,\"ignore_eos\":true}",
 "POST /v1/completions\n{\"prompt\":\"Hi\",\"max_tokens\":100,\"ignore_eos\":true,\"stream\":true}"]
--- timeout: 30
--- error_code eval
[504, 200]
--- response_body_like eval
['"code":"request_timeout"',
 qr/^(?:data: \{"id":"cmpl-.*\n\n)?data: \{"error":\{"message":"the request did not finish within llm_request_timeout \(1000 ms\)","type":"timeout_error","param":null,"code":504\}\}\n\ndata: \[DONE\]\n\n$/s]
--- no_error_log
[alert]



=== TEST 6: forward passes that keep failing: the engine goes FAILED, then 503s
--- main_config
    env LLM_TEST_FAULT=fail_forward_after_steps=0;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
# each request fails with the backend's message (500); the third failed
# forward pass in a row stops the engine
for my $i (1 .. 3) {
    my $j = main::llm_json_post('/v1/completions', {prompt => 'Hi', max_tokens => 5});
    Test::More::like($j->{error}{message} // '', qr/injected fault: the forward pass failed/,
                     "$name - request $i fails with the backend's message");
}
main::llm_poll('/v1/health', qr/^HTTP\/1\.\d 503/, 20);
--- request
GET /v1/health
--- error_code: 503
--- response_body_like: "message":"the engine failed: the engine stopped after 3 failed forward passes in a row; the last: injected fault: .*"code":"model_failed"
--- error_log eval
qr/\[alert\].*llm_model "tiny": the engine failed: .*failed forward passes.*; 0 requests failed, answering 503 until nginx is restarted/



=== TEST 7: a new request is refused with the engine's error
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}]}
--- error_code: 503
--- response_body_like: "message":"the engine failed: .*failed forward passes.*"code":"model_failed"



=== TEST 8: /tokenize on the failed engine: 503 with the reason
--- request
POST /v1/tokenize
{"prompt":"Hi"}
--- error_code: 503
--- response_body_like: "message":"the engine stopped after 3 failed forward passes in a row; .*"code":"model_failed"

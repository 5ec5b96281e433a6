# A client that goes away mid-stream cancels its engine sequence: /metrics
# shows no running request and no KV blocks in use shortly after.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: close the socket after the first event of a long generation
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
my $long = '{"messages":[{"role":"user","content":"Hello there, how are you today?"}],"max_tokens":30000,"ignore_eos":true,"stream":true}';
my $s = main::llm_hold_request(main::llm_post('/v1/chat/completions', $long));
# the role chunk goes out at LLM_EV_STARTED, the first content once running
my $got = main::llm_read_until($s, qr/"delta":\{"content":"[^"]/, 20);
Test::More::like($got, qr/data: \{"id":"chatcmpl-.*"delta":\{"content":"[^"]/s,
                 "$name - first events");
my $port = Test::Nginx::Util::server_port_for_client();
Test::More::like(main::llm_http_get($port, '/v1/metrics'),
                 qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 1\n.*llm:kv_cache_used_blocks\{model_name="tiny",device="cpu",worker="0"\} [1-9]/s,
                 "$name - running, with KV blocks");
$_->close for splice @main::LlmHeldSockets;
main::llm_poll('/v1/metrics', qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:kv_cache_used_blocks\{model_name="tiny",device="cpu",worker="0"\} 0\n/s, 20);
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:kv_cache_usage_perc\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:kv_cache_used_blocks\{model_name="tiny",device="cpu",worker="0"\} 0\n.*finished_reason="abort"\} 1\n
--- error_log eval
# noticed on the read event, or by a failed write
qr/client prematurely closed connection|(?:writev|send)\(\) failed|Connection reset by peer|Broken pipe/



=== TEST 2: the same for a non-streaming request
--- init
my $long = '{"prompt":"Hello","max_tokens":30000,"ignore_eos":true}';
main::llm_hold_request(main::llm_post('/v1/completions', $long));
main::llm_poll('/v1/metrics', qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 1\n/, 20);
$_->close for splice @main::LlmHeldSockets;
main::llm_poll('/v1/metrics', qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:kv_cache_used_blocks\{model_name="tiny",device="cpu",worker="0"\} 0\n/s, 20);
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:kv_cache_used_blocks\{model_name="tiny",device="cpu",worker="0"\} 0\n.*finished_reason="abort"\} 2\n



=== TEST 3: the server still serves after the disconnects
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"stream":true}
--- sse_check: 1
--- no_error_log
[error]
[alert]

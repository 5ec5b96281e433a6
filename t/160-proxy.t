# A front server proxy_passes to the module's server with nginx's default
# proxy settings (HTTP/1.0 upstream, proxy_buffering on): X-Accel-Buffering
# turns buffering off, so events arrive while generation goes on.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: a stream through the proxy is complete and well-formed
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location /v1/ { llm_pass tiny; }
    }
--- config
    location /v1/ { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1; }
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}
--- response_headers
Content-Type: text/event-stream
Cache-Control: no-cache
--- sse_check: 1
--- sse_usage
--- no_error_log
[error]



=== TEST 2: events pass the proxy while the generation goes on; closing cancels it
--- init
my $long = '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":30000,"ignore_eos":true,"stream":true}';
my $s = main::llm_hold_request(main::llm_post('/v1/chat/completions', $long));
my $got = main::llm_read_until($s, qr/"delta":\{"content":"/, 20);
Test::More::like($got, qr/^HTTP\/1\.1 200 .*\r\ndata: \{"id":"chatcmpl-/s,
                 "$name - the first events arrived through the proxy");
my $port = Test::Nginx::Util::server_port_for_client();
Test::More::like(main::llm_http_get($port, '/v1/metrics'),
                 qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 1\n/,
                 "$name - while the generation is still running");
$_->close for splice @main::LlmHeldSockets;
--- request
GET /v1/health
--- error_code: 200



=== TEST 3: the abandoned stream is cancelled behind the proxy
--- init
main::llm_poll('/v1/metrics', qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n/, 20);
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n



=== TEST 4: non-streaming requests and errors through the proxy
--- request eval
["POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":2}',
 "POST /v1/chat/completions\n" . '{"messages":[]}']
--- error_code eval
[200, 400]
--- response_body_like eval
['"chat.completion"', '"param":"messages"']
--- no_error_log
[error]

# A reload (nginx -s reload: the old worker shuts down gracefully, as on
# nginx -s quit) lets an in-flight stream finish: the old worker waits for
# it, and its engine is destroyed when the worker exits.  (Reload rather
# than quit so that the master is still there at the end of the block.)
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

master_on();
no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: a stream in flight during a reload runs to its end
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
# the master gets HUP while the request below is streaming: the child waits
# until the engine runs it (a fixed sleep raced fast machines, where the
# whole stream was over before the HUP)
my $pidfile = $Test::Nginx::Util::PidFile;
if (fork() == 0) {
    main::llm_poll('/v1/metrics', qr/^llm:num_requests_running\{[^}]*\} [1-9]/m, 30);
    open my $f, '<', $pidfile or exit 0;
    my $pid = <$f>;
    chomp $pid;
    kill 'HUP', $pid;
    POSIX::_exit(0);
}
--- request
POST /v1/completions
{"prompt":"Hi","max_tokens":2500,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}
--- timeout: 60
--- sse_check: 1
--- sse_usage
--- response_body_like: "finish_reason":"length".*"completion_tokens":2500,.*data: \[DONE\]\n\n$
--- error_log
gracefully shutting down
--- no_error_log
[alert]



=== TEST 2: a stalled engine: the worker fails its requests, answers 503 and exits to be replaced
# Pipelined on one connection: the two requests after the stream wait in
# nginx's buffer and are answered right after the stream's error event, in
# the same event loop iteration as the watchdog (before the worker quits).
--- main_config
    env LLM_TEST_FAULT=hang_after_steps=3;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m watchdog=2s;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
--- pipelined_requests eval
["POST /v1/chat/completions\n{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":100,\"ignore_eos\":true,\"stream\":true}",
 "GET /v1/health",
 "POST /v1/completions\n{\"prompt\":\"Hi\",\"max_tokens\":1}"]
--- timeout: 30
--- error_code eval
[200, 503, 503]
--- response_body_like eval
[qr/^data: \{"id":"chatcmpl-.*\n\ndata: \{"error":\{"message":"the engine made no progress for [0-9.]+ s with requests in flight \(watchdog=2000ms, 3 steps done\)","type":"service_unavailable_error","param":null,"code":503\}\}\n\ndata: \[DONE\]\n\n$/s,
 '"message":"the engine made no progress .*"code":"model_failed"',
 '"message":"the engine made no progress .*"code":"model_failed"']



=== TEST 3: the worker is replaced and the fresh one serves (a broken one answers 503 for ever)
# self-contained (a block that reuses a server is restarted under valgrind)
--- main_config
    env LLM_TEST_FAULT=hang_after_steps=3;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m watchdog=2s;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
my $s = main::llm_hold_request(main::llm_post('/v1/completions', '{"prompt":"Hi","max_tokens":100,"ignore_eos":true}'));
my $got = main::llm_read_until($s, qr/\r\n\r\n\{"error".*\}\n?\z/s, 60);
Test::More::like($got, qr/^HTTP\/1\.1 503 .*"message":"the engine made no progress/s, "$name - the stalled request gets a 503");
$_->close for splice @main::LlmHeldSockets;
my $logfile = Test::Nginx::Util::server_root() . '/logs/error.log';
my $text = '';
for (1 .. 600) {
    $text = do { local (@ARGV, $/) = ($logfile); <> } // '';
    last if $text =~ /exits to be replaced.*start worker process/s;
    select undef, undef, undef, 0.05;
}
Test::More::like($text, qr/\[alert\].*llm_model "tiny": the engine made no progress for [0-9.]+ s with requests in flight \(watchdog=2000ms, 3 steps done\); 1 requests failed, worker 0 exits to be replaced/,
                 "$name - the watchdog's alert");
Test::More::like($text, qr/the stalled engine is not destroyed \(its thread cannot be joined\).*worker process \d+ exited with code 0.*start worker process/s,
                 "$name - the old worker exited, a new one started");
Test::More::unlike($text, qr/open socket|\[crit\]|\[emerg\]/, "$name - nothing left open");
main::llm_wait_ready('/v1/health');
--- request
POST /v1/completions
{"prompt":"Hi","max_tokens":1}
--- response_body_like: "finish_reason":"length"
--- error_log eval
qr/\[alert\].*worker 0 exits to be replaced/
--- no_error_log
[error]



=== TEST 5: a request sent while the engine loads waits for it (no 503)
# After a reload the old workers stop accepting at once: requests reaching
# a new worker before its engine is ready must wait, not fail.  The load is
# made 3 s longer by the engine's fault injection; /health says 503
# meanwhile (readiness), the completion waits and succeeds.
--- main_config
env LLM_TEST_FAULT=load_delay_ms=3000;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
1;  # no wait for /health: the requests below go in while the model loads
--- request eval
["GET /v1/health",
 "POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":2,"ignore_eos":true}',
 "GET /v1/health"]
--- error_code eval
[503, 200, 200]
--- response_body_like eval
[qr/loading/, qr/"object":"text_completion".*"completion_tokens":2\b/s, qr/^/]
--- timeout: 60
--- no_error_log
[alert]



=== TEST 6: the wait is bounded by llm_request_timeout: then the 503
--- main_config
env LLM_TEST_FAULT=load_delay_ms=4000;
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; llm_request_timeout 500ms; }
--- init
1;  # no wait for /health
--- request
POST /v1/completions
{"prompt":"Hi","max_tokens":2}
--- error_code: 503
--- response_body_like: the model is still loading
--- timeout: 60
--- no_error_log
[alert]

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

# 64 simultaneous streaming requests all complete with well-formed streams;
# a slow reader does not stall the others (backpressure on its own request).
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
worker_connections(1024);
log_level('info');
run_tests();

__DATA__

=== TEST 1: 64 simultaneous streams
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health');
my @res = main::llm_streams(64, main::llm_post('/v1/chat/completions',
    '{"messages":[{"role":"user","content":"Count to ten"}],"max_tokens":16,"ignore_eos":true,'
    . '"stream":true,"stream_options":{"include_usage":true}}'), 120);
my @bad;
for my $i (0 .. 63) {
    my $raw = $res[$i] // '';
    my $p = $raw =~ m{^HTTP/1\.1 200 } ? main::llm_sse_problem(main::llm_dechunk($raw), 1, 1)
                                       : 'status: ' . substr($raw, 0, 40);
    push @bad, "$i: $p" if $p ne '';
}
Test::More::is(scalar(@bad), 0, "$name - all 64 streams well-formed")
    or Test::More::diag(join "\n", @bad[0 .. ($#bad < 4 ? $#bad : 4)]);
my %ids = map { ((($_ // '') =~ /"id":"(chatcmpl-[0-9a-f]+)"/)[0] // 'none', 1) } @res;
Test::More::is(scalar(keys %ids), 64, "$name - 64 distinct ids");
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:generation_tokens_total\{model_name="tiny",device="cpu",worker="0"\} (10[2-9]\d|1[1-9]\d\d|[2-9]\d\d\d)\n
--- no_error_log
[error]



=== TEST 2: a client that does not read does not hold up the others
--- init
# this stream's client never reads: nginx's buffers fill up and the request
# stops draining engine events until the socket is writable again
main::llm_hold_request(main::llm_post('/v1/chat/completions',
    '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":20000,"ignore_eos":true,"stream":true,"logprobs":true,"top_logprobs":5}'));
--- request eval
["POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"stream":true}',
 "POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":8}']
--- response_body_like eval
['data: \[DONE\]', '"text_completion"']
--- no_error_log
[error]



=== TEST 3: the slow client goes away; everything is released
--- init
$_->close for splice @main::LlmHeldSockets;
main::llm_poll('/v1/metrics', qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:kv_cache_used_blocks\{model_name="tiny",device="cpu",worker="0"\} 0\n/s, 30);
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:kv_cache_used_blocks\{model_name="tiny",device="cpu",worker="0"\} 0\n
--- no_error_log
[error]

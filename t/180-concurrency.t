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



=== TEST 4: a reader slower than generation: its request pauses in the engine, the others go on, nothing is lost
# A server with a 4 KB send buffer and a client with a 4 KB receive buffer
# that stops reading: nginx soon holds unsent output, the module stops
# taking the request's events, and the engine pauses the request once
# LLM_PAUSE_UNREAD_TOKENS tokens wait unread (llm:num_requests_paused).
# Without that chain the request would run to max_tokens, its output piling
# up in the worker.
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 sndbuf=4k;
        location /v1/ { llm_pass tiny; }
    }
--- config
    location /v1/ { llm_pass tiny; }
--- init
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF pack_sockaddr_in inet_aton);
main::llm_wait_ready('/v1/health');
my $conf = do { local (@ARGV, $/) = (Test::Nginx::Util::server_root() . '/conf/nginx.conf'); <> };
my ($slow_port) = $conf =~ /listen 127\.0\.0\.1:(\d+) sndbuf=4k/ or die "no slow port\n";
socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!\n";
setsockopt($s, SOL_SOCKET, SO_RCVBUF, 4096) or die "SO_RCVBUF: $!\n";
connect($s, pack_sockaddr_in($slow_port, inet_aton('127.0.0.1'))) or die "connect: $!\n";
binmode $s;
$s->autoflush(1);
print $s main::llm_post('/v1/completions',
    '{"prompt":"Hi","max_tokens":3000,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}');
push @main::LlmHeldSockets, $s;

my $lbl = 'model_name="tiny",device="cpu",worker="0"';
my $m = main::llm_poll('/v1/metrics', qr/^llm:num_requests_paused\{\Q$lbl\E\} 1$/m, 60);
Test::More::like($m, qr/^llm:num_requests_paused\{\Q$lbl\E\} 1$/m, "$name - the slow reader's request is paused");
my ($gen1) = $m =~ /^llm:generation_tokens_total\{\Q$lbl\E\} (\d+)$/m;
# Paused is steady only once the socket buffers are full: until then nginx
# drains a little more, the unread count drops under the threshold and the
# request takes a few more steps.  Wait for two scrapes 0.3 s apart that
# agree (still paused, same count).
for (1 .. 30) {
    Time::HiRes::sleep(0.3);
    $m = main::llm_http_get(Test::Nginx::Util::server_port_for_client(), '/v1/metrics');
    my ($g) = $m =~ /^llm:generation_tokens_total\{\Q$lbl\E\} (\d+)$/m;
    last if $m =~ /^llm:num_requests_paused\{\Q$lbl\E\} 1$/m && $g == $gen1;
    $gen1 = $g;
}
Test::More::cmp_ok($gen1, '<', 3000, "$name - paused before it finished ($gen1 tokens)");
my $pid = do { local (@ARGV, $/) = ($Test::Nginx::Util::PidFile); <> };
chomp $pid;
my $rss = sub { my $st = do { local (@ARGV, $/) = ("/proc/$pid/status"); <> }; ($st =~ /VmRSS:\s+(\d+)/)[0] };
my $rss1 = $rss->();

# another request runs to its end meanwhile
my $j = main::llm_json_post('/v1/completions', {prompt => 'Hi', max_tokens => 8, ignore_eos => JSON::PP::true});
Test::More::is($j->{usage}{completion_tokens}, 8, "$name - another request completes");
$m = main::llm_http_get(Test::Nginx::Util::server_port_for_client(), '/v1/metrics');
my ($gen2) = $m =~ /^llm:generation_tokens_total\{\Q$lbl\E\} (\d+)$/m;
Test::More::is($gen2, $gen1 + 8, "$name - the paused request generated nothing meanwhile");
Test::More::like($m, qr/^llm:num_requests_paused\{\Q$lbl\E\} 1$/m, "$name - still paused");
Test::More::diag("worker VmRSS while paused: $rss1 kB, after the other request: " . $rss->() . " kB");

# the reader catches up: the stream resumes and ends complete
my $got = main::llm_read_until($s, qr/data: \[DONE\]\n\n\r\n0\r\n\r\n\z/, 120);
my $body = main::llm_dechunk($got);
Test::More::is(main::llm_sse_problem($body, 1, 1), '', "$name - the slow stream is well-formed");
Test::More::like($body, qr/"completion_tokens":3000\b/, "$name - and has all 3000 tokens");
$_->close for splice @main::LlmHeldSockets;
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:num_requests_paused\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:kv_cache_used_blocks\{model_name="tiny",device="cpu",worker="0"\} 0\n
--- no_error_log
[error]



=== TEST 5: llm_queue_size counts every choice of a request
# max_num_seqs=1: one request runs, one waits; with llm_queue_size 2 a
# request with n=2 would make three waiting (429), and n=3 can never fit (400)
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m max_num_seqs=1;
--- config
    location /v1/ { llm_pass tiny; llm_queue_size 2; }
--- init
main::llm_wait_ready('/v1/health');
my $lbl = 'model_name="tiny",device="cpu",worker="0"';
my $long = main::llm_post('/v1/completions', '{"prompt":"Hi","max_tokens":30000,"ignore_eos":true}');
main::llm_hold_request($long);
main::llm_poll('/v1/metrics', qr/^llm:num_requests_running\{\Q$lbl\E\} 1$/m, 20);
main::llm_hold_request($long);
my $m = main::llm_poll('/v1/metrics', qr/^llm:num_requests_waiting\{\Q$lbl\E\} 1$/m, 20);
Test::More::like($m, qr/^llm:num_requests_waiting\{\Q$lbl\E\} 1$/m, "$name - one running, one waiting");
--- request eval
["POST /v1/completions\n{\"prompt\":\"Hi\",\"max_tokens\":1,\"n\":2}",
 "POST /v1/completions\n{\"prompt\":\"Hi\",\"max_tokens\":1,\"n\":3}"]
--- error_code eval
[429, 400]
--- response_body_like eval
['"code":"rate_limit_exceeded"|"type":"rate_limit',
 '"message":"this request needs 3 engine requests \(n times the prompts\), more than this server queues \(llm_queue_size 2\)".*"param":"n"']
--- no_error_log
[error]



=== TEST 6: the held requests go away; a request with n=2 fits again
--- init
$_->close for splice @main::LlmHeldSockets;
main::llm_poll('/v1/metrics', qr/llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n.*llm:num_requests_waiting\{model_name="tiny",device="cpu",worker="0"\} 0\n/s, 30);
--- request
POST /v1/completions
{"prompt":"Hi","max_tokens":1,"n":2}
--- response_body_like: "index":1
--- no_error_log
[error]

# Several workers (master process on): each worker has its own engine,
# says in error_log which device it runs on, and labels its /metrics
# series with its device and worker index.  One scrape reports every
# worker's engine (a shared zone of per-worker snapshots), after a reload
# only the new workers', after a crash the replacement's.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
master_on();
workers(2);
log_level('info');

sub error_log_text {
    my $log = Test::Nginx::Util::server_root() . '/logs/error.log';
    open my $fh, '<', $log or die "$log: $!";
    local $/;
    return <$fh> // '';
}

# Waits until worker 0 and worker 1 have logged that their engine serves,
# $t0 and $t1 times (default once; twice for a reloaded or replaced one).
sub wait_both_loaded {
    my ($t0, $t1) = @_;
    $t0 //= 1;
    $t1 //= $t0;
    my $deadline = time + 60;
    while (time < $deadline) {
        my $text = error_log_text();
        my $n0 = () = $text =~ /worker 0 serves on cpu/g;
        my $n1 = () = $text =~ /worker 1 serves on cpu/g;
        return if $n0 >= $t0 && $n1 >= $t1;
        select undef, undef, undef, 0.1;
    }
    die "workers 0 and 1 did not load ($t0, $t1 times) within 60 s\n";
}

# worker index => pid, from the latest "worker N serves on cpu" lines.
sub worker_pids {
    my %pid;
    # one copy of the log: a fresh string per iteration would restart
    # the //g match at 0 and loop forever
    my $text = error_log_text();
    while ($text =~ /\] (\d+)#\d+: [^\n]*llm_model "tiny": worker (\d+) serves on cpu/g) {
        $pid{$2} = $1;
    }
    return %pid;
}

my $L = 'model_name="tiny",device="cpu"';

# The values of a metric's series, as "worker=value" in the order of the
# scrape; '' when the metric is missing.
sub series {
    my ($body, $metric) = @_;
    my @v;
    while ($body =~ /^\Q$metric\E\{\Q$L\E,worker="(\d+)"\} (\S+)$/mg) {
        push @v, "$1=$2";
    }
    return join ' ', @v;
}

# A scrape's generation_tokens_total summed over the workers; undef unless
# it has exactly workers 0 and 1.
sub generated {
    my ($body) = @_;
    my $s = series($body, 'llm:generation_tokens_total');
    return undef unless $s =~ /^0=(\d+) 1=(\d+)$/;
    return $1 + $2;
}

sub scrape {
    return main::llm_dechunk(main::llm_http_get(
        Test::Nginx::Util::server_port_for_client(), '/v1/metrics'));
}

run_tests();

__DATA__

=== TEST 1: two CPU workers, each with its engine, logged and labelled
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health', 60);
main::wait_both_loaded();
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="[01]"\} 0\n
--- error_log
llm_model "tiny": worker 0 loads on cpu
llm_model "tiny": worker 1 loads on cpu
llm_model "tiny": worker 0 serves on cpu
llm_model "tiny": worker 1 serves on cpu
--- no_error_log
[error]



=== TEST 2: one scrape reports both workers' engines, whichever worker answers it
# Six scrapes on six connections: each must have worker 0's and worker 1's
# series (a worker alone knows only its own engine), each exactly once.
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health', 60);
main::wait_both_loaded();
--- request eval
[("GET /v1/metrics") x 6]
--- response_body_like eval
[(CORE::join('',
  '# TYPE llm:num_requests_running gauge\n',
  'llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\n',
  'llm:num_requests_running\{model_name="tiny",device="cpu",worker="1"\} 0\n',
  '# HELP .*',
  'llm:kv_cache_total_blocks\{model_name="tiny",device="cpu",worker="0"\} [1-9]\d*\n',
  'llm:kv_cache_total_blocks\{model_name="tiny",device="cpu",worker="1"\} [1-9]\d*\n',
  '# HELP .*',
  'llm:e2e_request_latency_seconds_count\{model_name="tiny",device="cpu",worker="0"\} \d+\n',
  'llm:e2e_request_latency_seconds_bucket\{model_name="tiny",device="cpu",worker="1",le="[^"]+"\} \d+\n',
  '.*llm:e2e_request_latency_seconds_count\{model_name="tiny",device="cpu",worker="1"\} \d+\n',
  '.*llm:request_success_total\{model_name="tiny",device="cpu",worker="1",finished_reason="error"\} 0\n$')) x 6]
--- no_error_log
[error]



=== TEST 3: a completion served by either worker is counted in every scrape
# The sum over the workers of llm:generation_tokens_total grows by what the
# requests generated, whichever worker served them and whichever answers
# the scrape (another worker's snapshot is at most one refresh old: poll).
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health', 60);
main::wait_both_loaded();
my $before = main::generated(main::scrape());
Test::More::ok(defined $before, "$name - a scrape has both workers' counters");
$before //= 0;
for my $i (1 .. 4) {
    my $j = main::llm_json_post('/v1/completions',
        {prompt => "Hi $i", max_tokens => 5, ignore_eos => JSON::PP::true});
    Test::More::is($j->{usage}{completion_tokens}, 5, "$name - completion $i");
}
my ($after, $seen) = (-1, 0);
my $deadline = Time::HiRes::time() + 30;
while (Time::HiRes::time() < $deadline) {
    $after = main::generated(main::scrape()) // -1;
    last if $after >= $before + 20;
    Time::HiRes::sleep(0.1);
}
Test::More::is($after, $before + 20, "$name - the 20 generated tokens are counted");
# and every scrape from now on has them, whichever worker answers
for my $i (1 .. 6) {
    $seen++ if (main::generated(main::scrape()) // -1) == $before + 20;
}
Test::More::is($seen, 6, "$name - in each of 6 more scrapes");
--- request
GET /v1/metrics
--- response_body_like: llm:generation_tokens_total\{model_name="tiny",device="cpu",worker="0"\} \d+\nllm:generation_tokens_total\{model_name="tiny",device="cpu",worker="1"\} \d+\n
--- no_error_log
[error]



=== TEST 4: after a reload, scrapes show the new workers only, while an old one still serves
# An old worker kept alive by a paused stream (a client that stops reading,
# on a server with a 4 KB send buffer) keeps its engine and its request
# after nginx -s reload; the new workers' zone is a new one, so their
# scrapes show two series, the new workers' (nothing paused), not the old
# worker's.
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=16m;
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1 sndbuf=4k;
        location /v1/ { llm_pass tiny; }
    }
--- config
    location /v1/ { llm_pass tiny; }
--- init
use Socket qw(PF_INET SOCK_STREAM SOL_SOCKET SO_RCVBUF pack_sockaddr_in inet_aton);
main::llm_wait_ready('/v1/health', 60);
main::wait_both_loaded();
my %old = main::worker_pids();
my $conf = do { local (@ARGV, $/) = (Test::Nginx::Util::server_root() . '/conf/nginx.conf'); <> };
my ($slow_port) = $conf =~ /listen 127\.0\.0\.1:(\d+) sndbuf=4k/ or die "no slow port\n";
socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!\n";
setsockopt($s, SOL_SOCKET, SO_RCVBUF, 4096) or die "SO_RCVBUF: $!\n";
connect($s, pack_sockaddr_in($slow_port, inet_aton('127.0.0.1'))) or die "connect: $!\n";
binmode $s;
$s->autoflush(1);
print $s main::llm_post('/v1/completions',
    '{"prompt":"Hi","max_tokens":3000,"ignore_eos":true,"stream":true}');
push @main::LlmHeldSockets, $s;
# any scrape shows the paused request, whichever worker has it
my $m = main::llm_poll('/v1/metrics', qr/^llm:num_requests_paused\{[^}]*\} 1\r?$/m, 60);
Test::More::like(main::series($m, 'llm:num_requests_paused'), qr/^(0=1 1=0|0=0 1=1)$/,
                 "$name - before the reload one worker has the paused request");

my $pid = do { local (@ARGV, $/) = ($Test::Nginx::Util::PidFile); <> };
chomp $pid;
kill 'HUP', $pid or die "HUP $pid: $!\n";
main::wait_both_loaded(2);
my %new = main::worker_pids();
Test::More::ok($new{0} != $old{0} && $new{1} != $old{1}, "$name - two new workers");
# scrapes over 3 refresh periods of the old worker (were it writing where
# the new ones read, some would show its paused request)
my ($n, $bad) = (0, 0);
my $end = Time::HiRes::time() + 3;
while (Time::HiRes::time() < $end) {
    my $b = main::scrape();
    $n++;
    $bad++ unless main::series($b, 'llm:num_requests_paused') eq '0=0 1=0'
               && main::series($b, 'llm:num_requests_running') eq '0=0 1=0';
    Time::HiRes::sleep(0.05);
}
Test::More::is($bad, 0, "$name - none of $n scrapes shows more than the new workers, nothing paused");
Test::More::ok((grep { kill 0, $_ } values %old) >= 1,
               "$name - while an old worker still runs the paused stream");
$_->close for splice @main::LlmHeldSockets;
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_paused\{model_name="tiny",device="cpu",worker="0"\} 0\nllm:num_requests_paused\{model_name="tiny",device="cpu",worker="1"\} 0\n#
--- no_error_log
[error]



=== TEST 5: a worker killed is replaced, and its replacement takes its index in the scrapes
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=16m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health', 60);
main::wait_both_loaded();
my %old = main::worker_pids();
kill 'KILL', $old{1} or die "kill $old{1}: $!\n";
main::wait_both_loaded(1, 2);
my %new = main::worker_pids();
Test::More::ok($new{1} != $old{1} && $new{0} == $old{0}, "$name - worker 1 was replaced");
my $ok = 0;
for my $i (1 .. 6) {
    $ok++ if main::series(main::scrape(), 'llm:num_requests_running') eq '0=0 1=0';
}
Test::More::is($ok, 6, "$name - 6 scrapes show workers 0 and 1 once each");
--- request
GET /v1/metrics
--- response_body_like: llm:num_requests_running\{model_name="tiny",device="cpu",worker="0"\} 0\nllm:num_requests_running\{model_name="tiny",device="cpu",worker="1"\} 0\n#
--- no_error_log
[error]

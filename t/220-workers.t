# Several workers (master process on): each worker has its own engine,
# says in error_log which device it runs on, and labels its /metrics
# series with its device and worker index.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
master_on();
workers(2);
log_level('info');

# Waits until both workers have logged that their engine serves.
sub wait_both_loaded {
    my $log = Test::Nginx::Util::server_root() . '/logs/error.log';
    my $deadline = time + 60;
    while (time < $deadline) {
        open my $fh, '<', $log or die "$log: $!";
        local $/;
        my $text = <$fh> // '';
        return if $text =~ /worker 0 serves on cpu/ && $text =~ /worker 1 serves on cpu/;
        select undef, undef, undef, 0.1;
    }
    die "the two workers did not both load within 60 s\n";
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

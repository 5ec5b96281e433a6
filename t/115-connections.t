# Connection handling: keep-alive reuse, pipelined requests, HTTP/1.0.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: pipelined requests on one keep-alive connection: stream, JSON, models, stream
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- pipelined_requests eval
["POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"stream":true}',
 "POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3}',
 "GET /v1/models",
 "POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":3,"stream":true}']
--- response_body_like eval
['^data: .*data: \[DONE\]\n\n$', '"chat.completion"', '"object":"list"', '"text_completion".*data: \[DONE\]\n\n$']
--- no_error_log
[error]



=== TEST 2: keep-alive: several requests reuse one connection
--- init
my $port = Test::Nginx::Util::server_port_for_client();
my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
    or die "connect: $!";
my $body = '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2,"stream":true}';
my $ok = 0;
for my $i (1 .. 3) {
    print $s "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
             . length($body) . "\r\n\r\n$body";
    # a chunked response ends with the zero-size chunk
    my $got = main::llm_read_until($s, qr/\r\n0\r\n\r\n\z/, 20);
    $ok++ if $got =~ /^HTTP\/1\.1 200 .*Connection: keep-alive.*data: \[DONE\]/s;
}
close $s;
Test::More::is($ok, 3, "$name - three streams on one connection");
--- request
GET /v1/health
--- no_error_log
[error]



=== TEST 3: HTTP/1.0 without streaming
--- request
POST /v1/chat/completions HTTP/1.0
{"messages":[{"role":"user","content":"Hi"}],"max_tokens":2}
--- response_headers
Content-Type: application/json
--- json_check
$j->{object} eq 'chat.completion'
--- no_error_log
[error]



=== TEST 4: a large body goes through a temporary file
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    client_body_buffer_size 1k;
    client_body_in_file_only on;
    location /v1/ { llm_pass tiny; }
--- request eval
"POST /v1/completions\n" . '{"prompt":"' . ('hello ' x 400) . '","max_tokens":1}'
--- json_check
$j->{usage}{prompt_tokens} >= 400 && $j->{usage}{prompt_tokens} <= 401
--- no_error_log
[error]

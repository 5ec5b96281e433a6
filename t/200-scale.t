# Scale out across hosts: a front nginx balances over module-serving
# backends with "hash $llm_prefix_key consistent", so a conversation (and
# every conversation sharing a long system prompt) keeps landing on the
# backend whose prefix cache holds it.
#
# Stand-in for several hosts: one nginx, the front is the test's server and
# each backend is a server {} block on its own port serving its own engine
# (llm_model a and b: the module's engines are per model, so two models of
# the same directory are two independent engines with their own KV and
# prefix caches, as two hosts would have).  A stopped backend is a port
# nothing listens on (what a host that went away, or an nginx that stopped,
# looks like to the front); a backend that answers 502/503 is a server that
# returns it.  Which backend a key lands on depends on the backends' ports,
# which are random, so the checks say "one backend" / "both", never which.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
no_root_location();
log_level('info');

our $SYS = 'You are a careful assistant for a travel agency. Answer in short '
         . 'sentences, name prices in euros, never invent timetables, and '
         . 'when you do not know something say so and suggest who to ask. '
         . 'Keep a friendly tone. ' x 3;

# POSTs through the front; returns (status, {lower-case header => value}).
sub front_post {
    my ($path, $data) = @_;
    my $body = JSON::PP->new->ascii->canonical->encode($data);
    my ($raw) = main::llm_streams(1, main::llm_post($path, $body), 30);
    my ($head) = split /\r\n\r\n/, $raw // '', 2;
    my ($status) = ($head // '') =~ m{^HTTP/1\.\d (\d+)};
    my %h;
    $h{lc $1} = $2 while ($head // '') =~ /^([\w-]+):\s*(.*?)\r?$/mg;
    return ($status // 0, \%h);
}

sub front_get {
    my ($path) = @_;
    my $port = Test::Nginx::Util::server_port_for_client();
    return main::llm_http_get($port, $path);
}

sub metric {
    my ($text, $name, $model) = @_;
    return $text =~ /^\Q$name\E\{model_name="\Q$model\E",[^}]*\} (\S+)$/m
        ? $1 : undef;
}

sub wait_backends {
    main::llm_wait_ready($_, 60) for @_;
}

sub chat {
    my ($sys, @turns) = @_;
    my @m = ({ role => 'system', content => $sys });
    my $role = 'user';
    for my $t (@turns) {
        push @m, { role => $role, content => $t };
        $role = $role eq 'user' ? 'assistant' : 'user';
    }
    return { messages => \@m, max_tokens => 1 };
}

run_tests();

__DATA__

=== TEST 1: requests sharing a long system prompt land on one backend, whose prefix cache hits
--- http_config
    llm_prefix_key_bytes 256;
    llm_model a $TEST_NGINX_MODEL_DIR threads=1 kv_cache=32m;
    llm_model b $TEST_NGINX_MODEL_DIR threads=1 kv_cache=32m;
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1; location / { llm_pass a; add_header X-Served-By a always; } }
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2; location / { llm_pass b; add_header X-Served-By b always; } }
    upstream llm_backends {
        hash $llm_prefix_key consistent;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
    }
--- config
    location /v1/ {
        proxy_pass http://llm_backends;
        add_header X-Backend $upstream_addr always;
        add_header X-Prefix-Key $llm_prefix_key always;
    }
    location /a/ { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/; }
    location /b/ { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_2/; }
--- init
main::wait_backends('/a/health', '/b/health');
my (%backend, %served, %key, $bad);
for my $i (1 .. 6) {
    my ($st, $h) = main::front_post('/v1/chat/completions',
                                    main::chat($main::SYS, "Question $i: is the museum open on Monday $i?"));
    $bad++ if $st != 200;
    $backend{$h->{'x-backend'} // 'none'}++;
    $served{$h->{'x-served-by'} // 'none'}++;
    $key{$h->{'x-prefix-key'} // 'none'}++;
}
Test::More::ok(!$bad, "$name - all requests succeeded");
Test::More::is(scalar(keys %key), 1, "$name - one prefix key") or Test::More::diag(join ',', keys %key);
Test::More::like((keys %key)[0], qr/^[0-9a-f]{32}$/, "$name - the key is 32 hex digits");
Test::More::is(scalar(keys %backend), 1, "$name - one backend") or Test::More::diag(join ',', keys %backend);
Test::More::is(scalar(keys %served), 1, "$name - served by one engine") or Test::More::diag(join ',', keys %served);
my ($hit) = keys %served;
my $miss = $hit eq 'a' ? 'b' : 'a';
my $m_hit = main::front_get("/$hit/metrics");
my $m_miss = main::front_get("/$miss/metrics");
Test::More::cmp_ok(main::metric($m_hit, 'llm:prefix_cache_hits_total', $hit) // 0, '>=', 5 * 16,
                   "$name - the chosen backend's prefix cache hits (5 requests x at least one block)");
Test::More::is(main::metric($m_miss, 'llm:prompt_tokens_total', $miss), '0',
               "$name - the other backend saw no prompt");
--- request
GET /a/metrics
--- response_body_like: llm:prefix_cache_hits_total\{model_name="a",device="cpu",worker="0"\} \d+\n
--- no_error_log
[error]



=== TEST 2: other conversations spread over both backends; every turn of one stays on its backend
--- http_config
    llm_prefix_key_bytes 256;
    llm_model a $TEST_NGINX_MODEL_DIR threads=1 kv_cache=32m;
    llm_model b $TEST_NGINX_MODEL_DIR threads=1 kv_cache=32m;
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1; location / { llm_pass a; add_header X-Served-By a always; } }
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2; location / { llm_pass b; add_header X-Served-By b always; } }
    upstream llm_backends {
        hash $llm_prefix_key consistent;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
    }
--- config
    location /v1/ {
        proxy_pass http://llm_backends;
        add_header X-Backend $upstream_addr always;
    }
    location /a/ { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/; }
    location /b/ { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_2/; }
--- init
main::wait_backends('/a/health', '/b/health');
my (%used, $moved, $bad);
for my $i (1 .. 24) {
    my $sys = "You are assistant number $i.";
    my ($st1, $h1) = main::front_post('/v1/chat/completions', main::chat($sys, "Hello $i"));
    my ($st2, $h2) = main::front_post('/v1/chat/completions',
                                      main::chat($sys, "Hello $i", "Hi!", "And the weather $i?"));
    my ($st3, $h3) = main::front_post('/v1/chat/completions',
                                      main::chat($sys, "Hello $i", "Hi!", "And the weather $i?", "Sunny.", "Thanks"));
    $bad++ if $st1 != 200 || $st2 != 200 || $st3 != 200;
    $used{$h1->{'x-backend'} // 'none'}++;
    $moved++ if ($h1->{'x-backend'} // '') ne ($h2->{'x-backend'} // '')
             || ($h1->{'x-backend'} // '') ne ($h3->{'x-backend'} // '');
}
Test::More::ok(!$bad, "$name - all requests succeeded");
Test::More::is(scalar(grep { /^127\.0\.0\.1:\d+$/ } keys %used), 2, "$name - both backends were used")
    or Test::More::diag(join ',', %used);
Test::More::ok(!$moved, "$name - later turns went where the first went");
--- request
GET /b/metrics
--- response_body_like: llm:prompt_tokens_total\{model_name="b",device="cpu",worker="0"\} [1-9]\d*\n
--- no_error_log
[error]



=== TEST 3: a stopped backend and one answering 502/503 are skipped; no request fails
--- http_config
    llm_model a $TEST_NGINX_MODEL_DIR threads=1 kv_cache=32m;
    llm_model b $TEST_NGINX_MODEL_DIR threads=1 kv_cache=32m;
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1; location / { llm_pass a; add_header X-Served-By a always; } }
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2; location / { llm_pass b; add_header X-Served-By b always; } }
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_4; return 502; }
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_5; return 503; }
    upstream llm_backends {
        hash $llm_prefix_key consistent;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_3 max_fails=1 fail_timeout=30s;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_4;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_5;
    }
--- config
    location /v1/ {
        proxy_pass http://llm_backends;
        proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        add_header X-Backend $upstream_addr always;
    }
    location /a/ { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/; }
    location /b/ { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_2/; }
--- init
main::wait_backends('/a/health', '/b/health');
my ($ok, $skipped) = (0, 0);
for my $i (1 .. 40) {
    my ($st, $h) = main::front_post('/v1/chat/completions',
                                    main::chat("You are assistant number $i.", "Hello $i"));
    $ok++ if $st == 200;
    # $upstream_addr lists every server tried: "dead, live"
    $skipped++ if ($h->{'x-backend'} // '') =~ /,/;
}
Test::More::is($ok, 40, "$name - every request succeeded");
Test::More::cmp_ok($skipped, '>', 0, "$name - some requests were passed on from a failed backend");
--- request
GET /v1/health
--- error_code: 200
--- error_log
connect() failed (111: Connection refused) while connecting to upstream



=== TEST 4: a front without any model computes the key: stable per conversation, distinct per prefix and model
--- http_config
    llm_prefix_key_bytes 64;
    client_body_buffer_size 1k;     # the long bodies below go to temp files
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location / { return 200 "backend\n"; }
    }
--- config
    location /v1/ {
        proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        add_header X-Prefix-Key $llm_prefix_key always;
    }
--- init
my $key = sub { my (undef, $h) = main::front_post('/v1/chat/completions', $_[0]); $h->{'x-prefix-key'} // '' };
my $long = 'x' x 3000;   # longer than llm_prefix_key_bytes 64 and the body buffer
my $k1 = $key->({ model => 'm', messages => [{ role => 'system', content => 'short' }, { role => 'user', content => 'one' }] });
my $k2 = $key->({ model => 'm', messages => [{ role => 'system', content => 'short' }, { role => 'user', content => 'two' }] });
my $k3 = $key->({ model => 'm', messages => [{ role => 'system', content => 'short' }, { role => 'user', content => 'one' },
                                             { role => 'assistant', content => 'reply' }, { role => 'user', content => 'more' }] });
my $k4 = $key->({ model => 'm', messages => [{ role => 'system', content => $long }, { role => 'user', content => 'one' }] });
my $k5 = $key->({ model => 'm', messages => [{ role => 'system', content => $long }, { role => 'user', content => 'two' }] });
my $k6 = $key->({ model => 'other', messages => [{ role => 'system', content => $long }, { role => 'user', content => 'one' }] });
my $k7 = $key->({ model => 'm', messages => [{ role => 'system', content => 'short' },
                                             { role => 'user', content => [{ type => 'text', text => 'one' }] }] });
my $p1 = $key->({ model => 'm', prompt => "$long tail one" });
my $p2 = $key->({ model => 'm', prompt => ["$long tail two", "other"] });
my $p3 = $key->({ model => 'm', prompt => [1, 2, 3] });
my $p4 = $key->({ model => 'm', prompt => [[1, 2, 3], [4]] });
Test::More::like($k1, qr/^[0-9a-f]{32}$/, "$name - a chat request has a key");
Test::More::isnt($k1, $k2, "$name - short prefixes that differ give different keys");
Test::More::is($k3, $k1, "$name - a later turn of the conversation keeps its key");
Test::More::like($k4, qr/^[0-9a-f]{32}$/, "$name - a body in a temp file has a key");
Test::More::is($k5, $k4, "$name - a shared prefix longer than the limit gives one key");
Test::More::isnt($k6, $k4, "$name - another model, another key");
Test::More::is($k7, $k1, "$name - content parts count as their text");
Test::More::is($p2, $p1, "$name - a prompt: its first bytes (and a batch's first prompt)");
Test::More::isnt($p1, $k4, "$name - a prompt and a chat differ");
Test::More::like($p3, qr/^[0-9a-f]{32}$/, "$name - token ids have a key");
Test::More::is($p4, $p3, "$name - a batch of token lists: the first");
--- request eval
["POST /v1/chat/completions\n{not json", "POST /v1/chat/completions\n{\"model\":\"m\"}", "GET /v1/models",
 "POST /v1/completions\n{\"prompt\":[{\"x\":1}]}", "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"assistant\",\"content\":\"hi\"}]}"]
--- response_headers eval
["!X-Prefix-Key", "!X-Prefix-Key", "!X-Prefix-Key", "!X-Prefix-Key", "!X-Prefix-Key"]
--- response_body eval
["backend\n", "backend\n", "backend\n", "backend\n", "backend\n"]
--- no_error_log
[error]



=== TEST 5: requests without a key (empty $llm_prefix_key) are spread round robin by nginx's hash
--- http_config
    upstream keyed {
        hash $llm_prefix_key consistent;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_2;
    }
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1; location / { return 200 "one\n"; } }
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_2; location / { return 200 "two\n"; } }
--- config
    location /v1/ { proxy_pass http://keyed; }
--- request eval
["POST /v1/chat/completions\nnot json", "POST /v1/chat/completions\nnot json",
 "GET /v1/models", "GET /v1/models"]
--- response_body eval
[qr/^(one|two)\n$/, qr/^(one|two)\n$/, qr/^(one|two)\n$/, qr/^(one|two)\n$/]
--- init
my %seen;
for (1 .. 4) {
    my ($raw) = main::llm_streams(1, main::llm_post('/v1/chat/completions', 'not json'), 10);
    $seen{$1}++ if ($raw // '') =~ /\r\n\r\n(one|two)\n/;
}
Test::More::is(join(',', map { "$_=$seen{$_}" } sort keys %seen), 'one=2,two=2',
               "$name - alternately on both servers");
--- no_error_log
[error]



=== TEST 6: a backend nginx that stops: its stream in flight ends normally, later requests move to the other backend, none fails
This backend is a second nginx started by the test (its own process, as on
another host), stopped with QUIT (nginx -s quit): it closes its listener at
once and finishes what it has in flight.
--- http_config
    llm_prefix_key_bytes 256;
    llm_model a $TEST_NGINX_MODEL_DIR threads=1 kv_cache=32m;
    server { listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1; location / { llm_pass a; add_header X-Served-By a always; } }
    upstream llm_backends {
        hash $llm_prefix_key consistent;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_3;
    }
--- config
    location /v1/ {
        proxy_pass http://llm_backends;
        proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        add_header X-Backend $upstream_addr always;
    }
    location = /second-port { return 200 "$TEST_NGINX_RAND_PORT_3"; }
    location /a/ { proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/; }
--- init
main::wait_backends('/a/health');
my ($port3) = main::front_get('/second-port') =~ /\r\n\r\n(\d+)$/;
my $dir = Test::Nginx::Util::server_root() . '/second';
mkdir $dir; mkdir "$dir/logs"; mkdir "$dir/conf";
my $mods = join '', map { "load_module $_;\n" } split ' ', ($ENV{TEST_NGINX_LOAD_MODULES} // '');
open my $fh, '>', "$dir/conf/nginx.conf" or die "$dir/conf/nginx.conf: $!";
print $fh <<"CONF";
${mods}worker_processes 1;
daemon on;
master_process on;
pid logs/nginx.pid;
error_log logs/error.log info;
@{[ $> == 0 ? "user root;" : "" ]}
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path logs/body;
    proxy_temp_path logs/proxy;
    fastcgi_temp_path logs/fastcgi;
    uwsgi_temp_path logs/uwsgi;
    scgi_temp_path logs/scgi;
    llm_model b $ENV{TEST_NGINX_MODEL_DIR} threads=1 kv_cache=32m;
    server { listen 127.0.0.1:$port3; location / { llm_pass b; add_header X-Served-By b always; } }
}
CONF
close $fh;
my $bin = $ENV{TEST_NGINX_BINARY} || 'nginx';
system($bin, '-p', "$dir/", '-c', 'conf/nginx.conf', '-e', 'logs/error.log') == 0
    or die "the second nginx did not start: see $dir/logs/error.log\n";
my $stop = sub {
    open my $p, '<', "$dir/logs/nginx.pid" or return;
    my $pid = <$p>; chomp $pid; kill 'QUIT', $pid if $pid;
    for (1 .. 100) { last unless kill 0, $pid; sleep 0.1 }
    kill 'KILL', $pid if kill 0, $pid;
};
eval {
    my $deadline = time + 60;
    sleep 0.1 until main::llm_http_get($port3, '/health') =~ m{^HTTP/1\.\d 200} || time > $deadline;
    # conversations and where they land while both backends run
    my (%before, $bad);
    for my $i (1 .. 20) {
        my ($st, $h) = main::front_post('/v1/chat/completions', main::chat("You are assistant number $i.", "Hello $i"));
        $bad++ if $st != 200;
        $before{$i} = $h->{'x-served-by'} // 'none';
    }
    my @on_b = grep { $before{$_} eq 'b' } sort { $a <=> $b } keys %before;
    Test::More::ok(!$bad, "$name - all requests succeeded with both backends");
    Test::More::ok(@on_b > 0 && @on_b < 20, "$name - both backends had conversations") or Test::More::diag(join ',', %before);
    # a stream in flight on b, then b stops
    my $i = $on_b[0] // 1;
    my $body = JSON::PP->new->ascii->encode({ %{ main::chat("You are assistant number $i.", "Hello $i") },
                                              max_tokens => 200, ignore_eos => JSON::PP::true, stream => JSON::PP::true });
    my $s = main::llm_hold_request(main::llm_post('/v1/chat/completions', $body));
    my $got = main::llm_read_until($s, qr/"delta":\{"content":"/, 20);
    $stop->();
    $got .= main::llm_read_until($s, qr/data: \[DONE\]/, 60);
    Test::More::like($got, qr/^HTTP\/1\.1 200 .*\r\nX-Served-By: b\r\n.*data: \[DONE\]/s,
                     "$name - the stream in flight on the stopping backend ran to its end");
    $_->close for splice @main::LlmHeldSockets;
    my ($moved, $failed) = (0, 0);
    for my $j (1 .. 20) {
        my ($st, $h) = main::front_post('/v1/chat/completions', main::chat("You are assistant number $j.", "Hello $j"));
        $failed++ if $st != 200;
        $moved++ if $before{$j} eq 'b' && ($h->{'x-served-by'} // '') eq 'a';
    }
    Test::More::is($failed, 0, "$name - no request failed after the backend stopped");
    Test::More::is($moved, scalar @on_b, "$name - the stopped backend's conversations moved to the other");
};
my $err = $@;
$stop->();
die $err if $err;
--- request
GET /a/metrics
--- response_body_like: llm:request_success_total\{model_name="a",device="cpu",worker="0",finished_reason="length"\} [1-9]

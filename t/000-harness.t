# Self-tests of the Test::Nginx::Socket-compatible harness (t/lib), with
# plain nginx directives only, so that a harness bug cannot hide behind (or
# be blamed on) the LLM module.  The blocks below exercise each supported
# feature on a live nginx; after them, small test files are run in
# subprocesses to show that the harness reports failures (wrong status,
# body, header, log line, timeout, nginx that does not die) and honours
# --- ONLY / --- LAST, plan counts, master_on/workers and
# TEST_NGINX_LOAD_MODULES.

# The harness is tested on plain nginx: the LLM module that make test loads
# into every other test file stays out, so its bugs cannot fail these tests.
BEGIN { delete $ENV{TEST_NGINX_LOAD_MODULES} }

use Test::Nginx::Socket 'no_plan';
use IO::Socket::INET;
use File::Temp qw(tempdir);
use File::Spec;

# A listening socket that never accepts: nginx's connection to it completes
# in the kernel backlog and then waits forever for a response.
my $black_hole = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                       Proto => 'tcp', Listen => 8)
    or die "cannot listen: $!";
$ENV{TEST_NGINX_BLACK_HOLE_PORT} = $black_hole->sockport;
$ENV{TEST_NGINX_GREETING} = 'hello from env';
$ENV{HARNESS_PASSED_ENV} = 'yes';

env_to_nginx('HARNESS_PASSED_ENV');
repeat_each(2);
log_level('info');
no_shuffle();
no_long_string();
run_tests();

# ---- failure reporting and selection, in subprocesses ----------------------

my $tmp = tempdir(CLEANUP => 1);
my $lib = File::Spec->rel2abs('t/lib');

# Runs a test file (text) under this harness with its own random port and
# server root; returns its stdout and stderr together.
sub run_file {
    my ($name, $text, %env) = @_;
    my $file = "$tmp/$name.t";
    open my $out, '>', $file or die "$file: $!";
    print $out $text;
    close $out;
    local $ENV{TEST_NGINX_RANDOMIZE} = 1;
    local @ENV{keys %env} = values %env;
    # Run from the temporary directory: server roots kept by failing files
    # (t/servroot_PORT) go away with it.
    mkdir "$tmp/t";
    my $output = `cd $tmp && $^X -I$lib $file 2>&1`;
    return ($output, $? >> 8);
}

{
    my ($out, $rc) = run_file('failures', <<'_EOF_');
use Test::Nginx::Socket;
repeat_each(1);
plan tests => 12;
no_shuffle();
run_tests();
__DATA__

=== TEST 1: wrong status
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- error_code: 201

=== TEST 2: wrong body
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- response_body
not ok

=== TEST 3: header present that must be absent, and a wrong header value
--- config
    location = /t { add_header X-Foo bar; return 200 "ok\n"; }
--- request
GET /t
--- response_headers
!X-Foo
Content-Type: text/html

=== TEST 4: body does not match
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- response_body_like: ^nope$

=== TEST 5: expected log line missing, unexpected one present
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /missing
--- error_code: 404
--- error_log
this line is never logged
--- no_error_log
[error]

=== TEST 6: nginx that starts although it must die
--- config
    location = /t { return 200; }
--- must_die
_EOF_
    my @not_ok = $out =~ /^not ok \d+ - .*?(TEST \d+: .*)$/mg;
    my @expected = (
        'TEST 1: wrong status - status code ok',
        'TEST 2: wrong body - response_body - response is expected (repeated req 0, req 0)',
        'TEST 3: header present that must be absent, and a wrong header value - header X-Foo not present in the raw headers',
        'TEST 3: header present that must be absent, and a wrong header value - header Content-Type ok',
        'TEST 4: body does not match - response_body_like - response is expected (ok)',
        'TEST 5: expected log line missing, unexpected one present - pattern "this line is never logged" should match a line in error.log (req 0)',
        'TEST 5: expected log line missing, unexpected one present - pattern "[error]" should not match any line in error.log but matches line',
        'TEST 6: nginx that starts although it must die - die as expected',
    );
    for my $want (@expected) {
        ok((grep { index($_, $want) >= 0 } @not_ok),
           "failure reported: $want")
            or diag $out;
    }
    is(scalar(() = $out =~ /^not ok /mg), scalar @expected,
       "exactly the broken checks fail") or diag $out;
    like($out, qr/^# Looks like you failed 8 tests of 12\.$/m,
         "plan tests => N is honoured and counted");
    isnt($rc, 0, "a failing test file exits non-zero");
}

{
    my ($out) = run_file('timeout', <<'_EOF_');
use Test::Nginx::Socket 'no_plan';
run_tests();
__DATA__

=== TEST 1: timeout without --- abort
--- config
    location = /t {
        proxy_pass http://127.0.0.1:$TEST_NGINX_BLACK_HOLE_PORT;
    }
--- request
GET /t
--- timeout: 0.3
--- ignore_response
_EOF_
    like($out, qr/^not ok 1 - ERROR: client socket timed out - \S+ TEST 1: timeout without/m,
         "a timeout without --- abort fails") or diag $out;
}

{
    my ($out) = run_file('crash', <<'_EOF_');
use Test::Nginx::Socket 'no_plan';
no_shuffle();
run_tests();
__DATA__

=== TEST 1: nginx killed behind the harness's back
--- config
    location = /t { return 200 "ok\n"; }
--- init
kill 'KILL', $Test::Nginx::Util::NginxPid;
--- request
GET /t

=== TEST 2: the next block runs normally
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- response_body
ok
_EOF_
    like($out, qr/^not ok \d+ - \S+ TEST 1: nginx killed .* - Can't connect/m,
         "a dead nginx fails the request") or diag $out;
    like($out, qr/^not ok \d+ - \S+ TEST 1: nginx killed .* - nginx exited before the end of the block/m,
         "a dead nginx fails its block");
    like($out, qr/^ok \d+ - \S+ TEST 2: the next block runs normally - response_body/m,
         "the next block gets a new nginx");
}

{
    my ($out) = run_file('pidfile', <<'_EOF_');
use Test::Nginx::Socket 'no_plan';
run_tests();
__DATA__

=== TEST 1: the pid file disappears (make clean during a run)
--- config
    location = /t { return 200 "ok\n"; }
--- init
unlink $Test::Nginx::Util::PidFile or die "unlink: $!";
Test::More::diag("nginx pid $Test::Nginx::Util::NginxPid");
--- request
GET /t
--- response_body
ok
_EOF_
    my ($pid) = $out =~ /^# nginx pid (\d+)$/m;
    ok($pid, "the subprocess started nginx") or diag $out;
    ok($pid && !Test::Nginx::Util::is_running($pid),
       "nginx is stopped at the end even without its pid file");
}

{
    my ($out) = run_file('only', <<'_EOF_');
use Test::Nginx::Socket 'no_plan';
run_tests();
__DATA__

=== TEST 1: not selected
--- config
    location = /t { return 200 "one\n"; }
--- request
GET /t
--- response_body
one

=== TEST 2: selected
--- ONLY
--- config
    location = /t { return 200 "two\n"; }
--- request
GET /t
--- response_body
two
_EOF_
    like($out, qr/^ok \d+ - \S+ TEST 2: selected - response_body/m, "--- ONLY runs its block");
    unlike($out, qr/TEST 1:/, "--- ONLY skips the other blocks");
    like($out, qr/^1\.\.2$/m, "--- ONLY: two checks in all") or diag $out;
}

{
    my ($out) = run_file('last', <<'_EOF_');
use Test::Nginx::Socket 'no_plan';
no_shuffle();
run_tests();
__DATA__

=== TEST 1: first
--- config
    location = /t { return 200 "one\n"; }
--- request
GET /t
--- response_body
one

=== TEST 2: stop here
--- LAST
--- config
    location = /t { return 200 "two\n"; }
--- request
GET /t
--- response_body
two

=== TEST 3: never run
--- config
    location = /t { return 200 "three\n"; }
--- request
GET /t
--- response_body
wrong
_EOF_
    like($out, qr/TEST 1: first - status code ok/, "--- LAST: earlier block runs");
    like($out, qr/TEST 2: stop here - status code ok/, "--- LAST: its own block runs");
    unlike($out, qr/TEST 3/, "--- LAST: later blocks do not run");
    unlike($out, qr/^not ok/m, "--- LAST: all pass") or diag $out;
}

{
    my ($out) = run_file('master', <<'_EOF_');
use Test::Nginx::Socket 'no_plan';
master_on();
workers(2);
run_tests();
__DATA__

=== TEST 1: master and two workers
--- config
    location = /conf { alias $TEST_NGINX_SERVER_ROOT/conf/nginx.conf; }
--- request
GET /conf
--- response_body_like
worker_processes\s+2;.*master_process on;
_EOF_
    like($out, qr/^ok \d+ .*TEST 1: master and two workers - response_body_like/m,
         "master_on() and workers(2) reach nginx.conf and nginx runs") or diag $out;
    unlike($out, qr/^not ok/m, "master mode: all pass");
}

{
    my ($out) = run_file('modules', <<'_EOF_', TEST_NGINX_LOAD_MODULES => '/nonexistent/ngx_test_module.so');
use Test::Nginx::Socket 'no_plan';
run_tests();
__DATA__

=== TEST 1: load_module from TEST_NGINX_LOAD_MODULES
--- config
    location = /t { return 200; }
--- must_die
--- error_log
dlopen() "/nonexistent/ngx_test_module.so" failed
_EOF_
    like($out, qr/^ok \d+ .* - die as expected/m,
         "TEST_NGINX_LOAD_MODULES: nginx fails on the missing module");
    like($out, qr/^ok \d+ .* - pattern "dlopen\(\) .*" matches a line in error\.log/m,
         "TEST_NGINX_LOAD_MODULES: a load_module line was written") or diag $out;
}

{
    my ($out) = run_file('curl', <<'_EOF_');
use Test::Nginx::Socket 'no_plan';
run_tests();
__DATA__

=== TEST 1: --- curl prints the equivalent command
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- more_headers
X-Foo: bar
--- curl
--- response_body
ok
_EOF_
    like($out, qr{^# curl .*-H 'X-Foo: bar'.* http://127\.0\.0\.1:\d+/t$}m,
         "--- curl prints a curl command line") or diag $out;
}

SKIP: {
    skip "valgrind is not installed", 4 if system('valgrind --version >/dev/null 2>&1') != 0;
    # TEST 2 has no --- config: nginx, stopped after TEST 1 so that
    # valgrind reports its leaks, must be started again with TEST 1's
    # whole configuration (the map of --- http_config included), and TEST
    # 1's --- init (which prepares the server: here a file in its fresh html
    # directory) must run again before TEST 2's own.
    my $file = <<'_EOF_';
use Test::Nginx::Socket 'no_plan';
no_shuffle();
run_tests();
__DATA__

=== TEST 1: under valgrind
--- http_config
    map $uri $greeting { default "ok"; }
--- config
    location = /t { return 200 "$greeting\n"; }
--- init
open my $f, '>', "$ENV{TEST_NGINX_HTML_DIR}/prepared" or die "prepared: $!";
close $f;
--- request
GET /t
--- response_body
ok

=== TEST 2: the previous block's configuration, restarted under valgrind
--- init
-f "$ENV{TEST_NGINX_HTML_DIR}/prepared" or die "TEST 1's init did not run again\n";
--- request
GET /t
--- response_body
ok
_EOF_
    my ($out) = run_file('valgrind-clean', $file, TEST_NGINX_USE_VALGRIND => 1);
    like($out, qr/^ok \d+ .* TEST 1: .* - response_body/m, "valgrind mode: nginx serves");
    like($out, qr/^ok \d+ .* TEST 2: .* - response_body/m,
         "valgrind mode: a block without --- config gets a server") or diag $out;
    unlike($out, qr/^not ok/m, "valgrind mode: nginx's own exit leaks are suppressed")
        or diag $out;
    # Reporting reachable blocks makes valgrind print something at exit.
    ($out) = run_file('valgrind-report', $file, TEST_NGINX_USE_VALGRIND =>
                      '--tool=memcheck --leak-check=full --show-leak-kinds=all');
    like($out, qr/^not ok \d+ .* - valgrind reported errors/m,
         "valgrind mode: valgrind's report fails the block") or diag $out;
}

__DATA__

=== TEST 1: return, exact body, headers present and absent
--- config
    location = /t {
        add_header X-Added yes;
        return 200 "hello\n";
    }
--- request
GET /t
--- response_body
hello
--- response_headers
X-Added: yes
Content-Length: 6
!X-Not-There
--- error_code: 200
--- no_error_log
[error]
[alert]



=== TEST 2: the default location / serves html/index.html
--- config
--- request
GET /
--- response_body chomp
<html><head><title>It works!</title></head><body>It works!</body></html>
--- response_headers_like
Content-Type: text/html.*
Server: nginx/[\d.]+



=== TEST 3: error_code, error_code_like and the error log of this request only
--- config
    location = /t { return 200; }
--- request
GET /no-such-file
--- error_code: 404
--- error_log
[error]
No such file or directory
--- grep_error_log eval: qr/open\(\) "[^"]+" failed/
--- grep_error_log_out eval
[qq{open() "$ENV{TEST_NGINX_SERVER_ROOT}/html/no-such-file" failed\n},
 qq{open() "$ENV{TEST_NGINX_SERVER_ROOT}/html/no-such-file" failed\n}]



=== TEST 4: error_code_like and eval'd log patterns
--- config
    location = /t { return 403; }
--- request
GET /nothing
--- error_code_like: ^4\d\d$
--- error_log eval
qr/\[error\] \d+#\d+: \*\d+ open\(\) ".*nothing" failed/
--- no_error_log eval
[qr/\[emerg\]/, "[alert]"]



=== TEST 5: response_body_like and response_body_unlike
--- config
    location = /t { return 200 "line one\nline two\n"; }
--- request
GET /t
--- response_body_like: one.line two
--- response_headers
Content-Type: text/plain



=== TEST 6: response_body_unlike
--- config
    location = /t { return 200 "all good\n"; }
--- request
GET /t
--- response_body_unlike: error|fail



=== TEST 7: $TEST_NGINX_* variables in config, http_config and main_config
--- main_config
    pcre_jit on;
--- http_config
    map $uri $greeting {
        default "$TEST_NGINX_GREETING";
    }
--- config
    location = /t {
        return 200 "$greeting on port $TEST_NGINX_SERVER_PORT\n";
    }
--- request
GET /t
--- response_body eval
"hello from env on port $ENV{TEST_NGINX_SERVER_PORT}\n"



=== TEST 8: the generated nginx.conf (env_to_nginx, log level, paths)
--- config
    location = /conf { alias $TEST_NGINX_SERVER_ROOT/conf/nginx.conf; }
--- request
GET /conf
--- response_body_like eval
qr{error_log \S+/logs/error\.log info;.*env HARNESS_PASSED_ENV;.*client_body_temp_path \S+/client_body_temp;.*listen\s+\d+;}s



=== TEST 9: proxy_pass to another location, request body and its length
--- config
    location = /echo {
        proxy_set_header X-Body $request_body;
        proxy_set_header X-Len $content_length;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/sink;
    }
    location = /sink {
        return 200 "$request_method len=$http_x_len body=[$http_x_body]\n";
    }
--- request
POST /echo
  hello world  
--- response_body
POST len=11 body=[hello world]



=== TEST 10: more_headers, including Host
--- config
    location = /t { return 200 "$host $http_x_foo $http_x_bar\n"; }
--- more_headers
X-Foo: foo value
# a comment line
X-Bar: bar
Host: example.com
--- request
GET /t
--- response_body
example.com foo value bar



=== TEST 11: request eval and query strings
--- config
    location = /t { return 200 "a=$arg_a\n"; }
--- request eval
"GET /t?a=" . (40 + 2)
--- response_body
a=42



=== TEST 12: several requests in one block
--- config
    location = /t { return 200 "t\n"; }
--- request eval
["GET /t", "GET /nope"]
--- error_code eval
[200, 404]
--- response_body_like eval
["^t\$", "404 Not Found"]



=== TEST 13: pipelined requests on one keep-alive connection
--- config
    location = /a { return 200 "a\n"; }
    location = /b { add_header X-B 1; return 200 "b\n"; }
--- pipelined_requests eval
["GET /a", "GET /b"]
--- response_body eval
["a\n", "b\n"]
--- response_headers eval
["!X-B", "X-B: 1"]



=== TEST 14: chunked response (sub_filter drops Content-Length)
--- config
    location = /t {
        sub_filter_types text/plain;
        sub_filter 'hello' 'howdy';
        return 200 "hello world\n";
    }
--- request
GET /t
--- response_headers
Transfer-Encoding: chunked
!Content-Length
--- response_body
howdy world



=== TEST 15: HTTP/1.0 response delimited by closing the connection
--- config
    location = /t {
        sub_filter_types text/plain;
        sub_filter 'hello' 'howdy';
        return 200 "hello world\n";
    }
--- request
GET /t HTTP/1.0
--- response_headers
!Transfer-Encoding
!Content-Length
--- response_body
howdy world



=== TEST 16: raw_request sent as is
--- config
    location = /t { return 200 "$server_protocol $http_x_raw\n"; }
--- raw_request eval
"GET /t HTTP/1.0\r\nX-Raw: yes\r\n\r\n"
--- response_body
HTTP/1.0 yes



=== TEST 17: raw_request in packets with raw_request_middle_delay
--- config
    location = /t { return 200 "$http_x_late\n"; }
--- raw_request eval
["GET /t HTTP/1.1\r\nHost: localhost\r\n",
 "X-Late: arrived\r\nConnection: close\r\n\r\n"]
--- raw_request_middle_delay: 0.2
--- response_body
arrived
--- error_log
http header: "X-Late: arrived"
--- log_level: debug



=== TEST 18: a request in packets (body split)
--- config
    location = /echo {
        proxy_set_header X-Body $request_body;
        proxy_pass http://127.0.0.1:$TEST_NGINX_SERVER_PORT/sink;
    }
    location = /sink { return 200 "[$http_x_body]\n"; }
--- request eval
[["POST /echo\nhel", {value => "lo", delay_before => 0.1}]]
--- response_body
[hello]



=== TEST 19: --- timeout, --- abort, --- wait and the log after the client left
--- config
    location = /t {
        proxy_pass http://127.0.0.1:$TEST_NGINX_BLACK_HOLE_PORT;
    }
--- request
GET /t
--- timeout: 300ms
--- abort
--- ignore_response
--- wait: 0.2
--- error_log
prematurely closed connection



=== TEST 20: HTTP/2 through curl
--- http2
--- config
    location = /t {
        add_header X-H2 yes;
        return 200 "$server_protocol $http_x_foo\n";
    }
--- more_headers
X-Foo: over h2
--- request
GET /t
--- response_body
HTTP/2.0 over h2
--- response_headers
X-H2: yes



=== TEST 21: HTTP/2 POST through curl, proxied to a server on a random port
--- http2
--- http_config
    server {
        listen 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
        location = /sink { return 200 "[$http_x_body]\n"; }
    }
--- config
    location = /echo {
        proxy_set_header X-Body $request_body;
        proxy_pass http://127.0.0.1:$TEST_NGINX_RAND_PORT_1/sink;
    }
--- request
POST /echo
h2 body
--- response_body
[h2 body]



=== TEST 22: HEAD request
--- config
    location = /t { return 200 "a body\n"; }
--- request
HEAD /t
--- response_headers
Content-Length: 7
--- response_body



=== TEST 23: user_files served from html/
--- config
    location /files/ { alias $TEST_NGINX_SERVER_ROOT/html/; }
--- user_files
>>> a.txt
file a
>>> sub/b.txt
file b
--- request eval
["GET /files/a.txt", "GET /files/sub/b.txt"]
--- response_body eval
["file a\n", "file b\n"]



=== TEST 24: a block without --- config reuses the previous server
--- request
GET /files/a.txt
--- response_body
file a



=== TEST 25: must_die with the startup error in the error log
--- config
    bogus_directive on;
--- must_die
--- error_log
[emerg]
unknown directive "bogus_directive"



=== TEST 26: must_die with an exit code
--- main_config
    bogus_main_directive;
--- config
--- must_die: 1
--- error_log eval
qr/\[emerg\] .*unknown directive "bogus_main_directive"/



=== TEST 27: per-block log_level
--- log_level: error
--- config
    location = /t { return 200 "quiet\n"; }
--- request
GET /t
--- response_body
quiet
--- no_error_log
[info]
[debug]
[notice]



=== TEST 28: skip_eval skips the block's checks
--- skip_eval: 2: 1
--- config
    location = /t { return 500; }
--- request
GET /t
--- response_body
never compared



=== TEST 29: $ServerPort in response_body
--- config
    location = /t { return 200 "port $server_port\n"; }
--- request
GET /t
--- response_body
port $ServerPort



=== TEST 30: response_body_filters
--- config
    location = /t { return 200 "MiXeD\n"; }
--- request
GET /t
--- response_body_filters
lc
--- response_body
mixed



=== TEST 31: an error_log pattern seen once per repetition
--- config
    location = /t { return 200 "x\n"; }
--- request
GET /missing-again
--- error_code: 404
--- grep_error_log: No such file or directory
--- grep_error_log_out
No such file or directory



=== TEST 32: SKIP blocks are not run
--- SKIP
--- config
    location = /t { return 500; }
--- request
GET /t
--- response_body
never compared

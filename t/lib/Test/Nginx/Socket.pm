package Test::Nginx::Socket;

# A Test::Nginx::Socket-compatible test scaffold on top of Test::Base, used
# when openresty's test-nginx is not installed (Debian does not package it).
# Test files written for the real one run unchanged for the subset that
# t/README.md documents.  This file builds and sends the requests and checks
# the responses and the error log; Test::Nginx::Util manages nginx.
#
# "-base" (not "-Base") on purpose: it makes this package a Test::Base
# subclass without Spiffy's source filter.

use Test::Base -base;

use strict;
use warnings;

our $VERSION = '0.29';

use POSIX qw(EAGAIN EINTR EWOULDBLOCK);
use Time::HiRes qw(sleep time);
use IO::Socket::INET ();
use Socket qw(IPPROTO_TCP);
use List::Util qw(min);
use Digest::MD5 ();
use Digest::SHA ();
use HTTP::Response ();

use Test::Nginx::Util;

our @EXPORT = qw(
    env_to_nginx is_str plan run_tests run_test repeat_each config_preamble
    worker_connections master_process_enabled no_long_string workers
    master_on master_off log_level no_shuffle no_root_location server_name
    server_addr server_root html_dir server_port server_port_for_client
    timeout no_nginx_manager check_accum_error_log add_block_preprocessor
    bail_out add_cleanup_handler add_response_body_check
);

our @ResponseBodyChecks;

sub add_response_body_check ($) {
    push @ResponseBodyChecks, shift;
}

$Test::Nginx::Util::RunTestHelper = \&run_test_helper;
$Test::Nginx::Util::CheckErrorLog = \&check_error_log;

$SIG{PIPE} = 'IGNORE';

# A section's value in scalar context.  Test::Base blocks answer an unknown
# section with an empty list, which would shift the arguments of a call.
sub section ($$) {
    my ($block, $name) = @_;
    return scalar $block->$name;
}

# ---- building requests -------------------------------------------------------

# "more_headers" text to ("Name: value\r\n"..., is_chunked); lines starting
# with # are comments.
sub parse_more_headers ($) {
    my $in = shift;
    my $out = '';
    my $is_chunked;
    for my $header (split /\n+/, $in) {
        next if $header =~ /^\s*#/;
        my ($key, $val) = split /:\s*/, $header, 2;
        $val //= '';
        $is_chunked = 1 if lc($key) eq 'transfer-encoding' && $val eq 'chunked';
        $out .= "$key: $val\r\n";
    }
    return ($out, $is_chunked);
}

# Turns the short form "METHOD [URI [VERSION]]\nbody" into a complete
# request: default URI / and HTTP/1.1, Host and Connection headers unless
# given, Content-Length for a body (trimmed) unless chunked or given.
# Takes and returns a list of packets: the boundaries between packets stay
# where they were relative to the body.
sub build_request ($$$$$) {
    my ($name, $more_headers, $is_chunked, $conn, $packets) = @_;
    my $raw = join '', @$packets;

    $raw =~ /\A(\s*)(\S+)( *)(?:(\S+)( *))?(?:(\S+)( *))?(\r?\n|\z)/
        or bail_out("$name - Request line is not valid. Should be "
                    . "'meth [url [version]]' but got \"$raw\".");
    my $line_len = $+[0];
    my ($meth, $url, $ver) = ($2, $4 // '/', $6 // 'HTTP/1.1');
    my $content = substr($raw, $line_len);

    my $len_header = '';
    if (!$is_chunked && $content ne ''
        && $more_headers !~ /(?:^|\n)Content-Length:/i)
    {
        $content =~ s/^\s+|\s+$//gs;
        $len_header = "Content-Length: " . length($content) . "\r\n";
    }

    (my $extra = $more_headers) =~ s/(?<!\r)\n/\r\n/gs;
    my $headers = '';
    $headers .= "Host: $ServerName\r\n" if $extra !~ /(?:^|\n)Host:/i;
    $headers .= "Connection: $conn\r\n" if $extra !~ /(?:^|\n)Connection/i;
    $headers .= "$extra$len_header\r\n";

    my $head = "$meth $url $ver\r\n$headers";
    my $req = $head . $content;
    return [$req] if @$packets <= 1;

    # Map the old packet boundaries onto the new request: one inside the
    # request line falls at the end of the new head, one inside the body
    # moves by the growth of the head (and by what trimming removed).
    my $orig_content = substr($raw, $line_len);
    (my $lead) = $orig_content =~ /\A(\s*)/;
    my $lead_trim = $len_header ne '' ? length($lead) : 0;
    my @out;
    my ($pos_old, $pos_new) = (0, 0);
    for my $i (0 .. $#$packets - 1) {
        $pos_old += length $packets->[$i];
        my $b = $pos_old <= $line_len
            ? length($head)
            : length($head) + $pos_old - $line_len - $lead_trim;
        $b = length($head) if $b < length($head);
        $b = length($req) if $b > length($req);
        $b = $pos_new if $b < $pos_new;
        push @out, substr($req, $pos_new, $b - $pos_new);
        $pos_new = $b;
    }
    push @out, substr($req, $pos_new);
    return \@out;
}

sub headers_for ($$$) {
    my ($more_headers, $i, $what) = @_;
    if (ref $more_headers eq 'ARRAY') {
        my $hdr = $more_headers->[$i];
        bail_out("--- more_headers lacks data for the $what") unless defined $hdr;
        return parse_more_headers($hdr);
    }
    return parse_more_headers($more_headers);
}

# The requests of a block: a list of requests, each a list of packets
# ({value => bytes, delay_before => seconds}).
sub get_req_from_block ($) {
    my $block = shift;
    my $name = $block->name;
    my @req_list;

    my $raw = section($block, 'raw_request');
    if (defined $raw) {
        if (ref $raw eq 'ARRAY') {
            push @req_list, [map { ref $_ eq 'HASH' ? $_ : {value => $_} } @$raw];
        } else {
            push @req_list, [{value => $raw}];
        }
        return \@req_list;
    }

    my $request;
    if (defined section($block, 'request_eval')) {
        $request = eval section($block, 'request_eval');
        warn $@ if $@;
    } else {
        $request = section($block, 'request');
        if (defined $request && !ref $request) {
            while ($request =~ s/^\s*\#[^\n]+\s+|^\s+//gs) { }
        }
    }
    my $more_headers = section($block, 'more_headers') // '';

    my $pipelined = section($block, 'pipelined_requests');
    if (defined $pipelined) {
        bail_out("$name - invalid entries in --- pipelined_requests")
            unless ref $pipelined eq 'ARRAY';
        my $all = '';
        for my $i (0 .. $#$pipelined) {
            my ($hdr, $chunked) = headers_for($more_headers, $i,
                                              "$i pipelined request");
            my $conn = $i == $#$pipelined ? 'close' : 'keep-alive';
            $all .= build_request($name, $hdr, $chunked, $conn,
                                  [$pipelined->[$i]])->[0];
        }
        push @req_list, [{value => $all}];
        return \@req_list;
    }

    bail_out("$name - request empty") unless defined $request;

    if (!ref $request) {
        my ($hdr, $chunked) = headers_for($more_headers, 0, 'request');
        push @req_list, [{value => build_request($name, $hdr, $chunked,
                                                 'close', [$request])->[0]}];
    } elsif (ref $request eq 'ARRAY') {
        for my $i (0 .. $#$request) {
            my $one = $request->[$i];
            my ($hdr, $chunked) = headers_for($more_headers, $i, "${i}th request");
            if (!ref $one) {
                push @req_list, [{value => build_request($name, $hdr, $chunked,
                                                         'close', [$one])->[0]}];
            } elsif (ref $one eq 'ARRAY') {
                my @values = map {
                    ref $_ eq 'HASH' ? $_->{value}
                    : !ref $_ ? $_
                    : bail_out("$name - a packet must be a string or a hash with value")
                } @$one;
                my $built = build_request($name, $hdr, $chunked, 'close', \@values);
                my @packets;
                for my $j (0 .. $#$built) {
                    my %p = ref $one->[$j] eq 'HASH' ? %{ $one->[$j] } : ();
                    $p{value} = $built->[$j];
                    push @packets, \%p;
                }
                push @req_list, \@packets;
            } else {
                bail_out("$name - a request must be a string or an array of packets");
            }
        }
    } else {
        bail_out("$name - invalid --- request: MUST be string or array of requests");
    }
    return \@req_list;
}

# ---- sending ---------------------------------------------------------------

sub connect_to_server ($$) {
    my ($block, $timeout) = @_;
    my $name = $block->name;
    my $addr = section($block, 'server_addr_for_client') // $ServerAddr;
    my $tries = $Test::Nginx::Util::TotalConnectingTimeouts ? 20 : 50;
    my $err;
    for my $try (1 .. $tries) {
        my $sock = IO::Socket::INET->new(PeerAddr => $addr,
                                         PeerPort => $ServerPortForClient,
                                         Proto => 'tcp', Timeout => $timeout);
        return $sock if $sock;
        $err = $!;
        if (defined $Test::Nginx::Util::ChildPid && waitpid($Test::Nginx::Util::ChildPid, POSIX::WNOHANG()) == $Test::Nginx::Util::ChildPid) {
            undef $Test::Nginx::Util::ChildPid;
            last;
        }
        # Retrying is for an nginx still starting, not for a dead one.
        if (defined $NginxPid && !is_running($NginxPid)) {
            Test::More::fail("$name - Can't connect to $addr:$ServerPortForClient: $err");
            Test::More::diag(nginx_gone_diag());
            return undef;
        }
        my $wait = (sleep_time() + sleep_time() * $try) * $try / 2;
        $wait = 1 if $wait > 1;
        sleep $wait;
    }
    my $msg = "$name - Can't connect to $addr:$ServerPortForClient: $err (aborted)\n";
    if (++$Test::Nginx::Util::TotalConnectingTimeouts < 3) {
        Test::More->builder->no_ending(1);
        Test::More::fail($msg);
    } else {
        bail_out($msg);
    }
    return undef;
}

# Writes the packets (sleeping before each one after the first by its
# delay_before or raw_request_middle_delay) while reading the response,
# until the server closes the connection or nothing happens for $timeout
# seconds.  A timeout fails the test unless the block says --- abort.
sub send_request ($$$$) {
    my ($req, $middle_delay, $timeout, $block) = @_;
    my $name = $block->name;
    my @bits = @$req;
    my $head_req = (join '', map { $_->{value} } @bits) =~ /^\s*HEAD\s+/ ? 1 : 0;

    my $sock = connect_to_server($block, $timeout) or return (undef, $head_req);
    $sock->blocking(0);

    my $resp = '';
    my $wbuf = (shift @bits)->{value};
    my $woff = 0;
    my $writing = 1;
    my $bits = '';
    vec($bits, fileno($sock), 1) = 1;

    while (1) {
        my $rout = $bits;
        my $wout = $writing ? $bits : undef;
        my $nfound = select($rout, $wout, undef, $timeout);
        if ($nfound < 0) {
            next if $! == EINTR;
            warn "WARNING: $name - select() failed: $!\n";
            close $sock;
            last;
        }
        my $r = vec($rout, fileno($sock), 1);
        my $w = $writing && vec($wout, fileno($sock), 1);
        if ($nfound == 0) {
            close $sock;
            if (!defined section($block, 'abort')) {
                Test::More->builder->no_ending(1);
                Test::More::fail("ERROR: client socket timed out - $name\n");
            } else {
                sleep 0.005;
            }
            last;
        }
        if ($w) {
            while (1) {
                my $rest = length($wbuf) - $woff;
                if ($rest > 0) {
                    my $n = syswrite($sock, $wbuf, $rest, $woff);
                    if (!defined $n) {
                        last if $! == EAGAIN || $! == EWOULDBLOCK;
                        warn "write failed: $!\n";
                        $resp = "write failed: $!" if $resp eq '';
                        $writing = 0;
                        last;
                    }
                    $woff += $n;
                    next;
                }
                my $next = shift @bits;
                if (!defined $next) {
                    $writing = 0;
                    my $shutdown = section($block, 'shutdown');
                    if (defined $shutdown) {
                        $shutdown = 1 if $shutdown =~ /^\s*$/s;
                        shutdown($sock, $shutdown);
                    }
                    last;
                }
                my $delay = $next->{delay_before} // $middle_delay;
                sleep $delay if $delay;
                ($wbuf, $woff) = ($next->{value}, 0);
            }
        }
        if ($r) {
            my $closed;
            while (1) {
                my $n = sysread($sock, my $buf, 4096);
                if (!defined $n) {
                    last if $! == EAGAIN || $! == EWOULDBLOCK;
                    warn "WARNING: $name - HTTP response read failure: $!\n";
                    $closed = 1;
                    last;
                }
                if ($n == 0) { $closed = 1; last; }
                $resp .= $buf;
            }
            if ($closed) {
                close $sock;
                last;
            }
        }
    }
    return ($resp, $head_req);
}

sub curl_command ($$) {
    my ($block, $req) = @_;
    my $name = $block->name;
    my $raw = join '', map { $_->{value} } @$req;

    $raw =~ m{^\s*(\w+)\s+(\S+)\s+HTTP/(\S+)\r?\n}gc
        or bail_out("$name - cannot parse the request line of: $raw");
    my ($meth, $uri, $ver) = ($1, $2, $3);

    my @args = ('curl', '-i', '-sS', '-H', 'User-Agent:', '-H', 'Accept:',
                '-H', 'Host:');
    push @args, '--http2', '--http2-prior-knowledge' if use_http2($block);
    push @args, $meth eq 'HEAD' ? ('-I') : ('-X', $meth);
    push @args, '-0' if $ver ne '1.1' && !use_http2($block);

    $raw =~ m{\G(.*?)\r?\n\r?\n}gcs
        or bail_out("$name - cannot parse the headers of: $raw");
    my $found_type;
    for my $h (grep { !/^Connection\s*:/i } split /\r\n/, $1) {
        $found_type = 1 if $h =~ /^\s*Content-Type\s*:/i;
        push @args, '-H', $h;
    }
    if ($raw =~ m{\G(.+)}gcs) {
        push @args, '-H', 'Content-Type: ' unless $found_type;
        my $file = html_dir() . "/curl.data.bin";
        open my $fh, '>', $file or bail_out("cannot write $file: $!");
        binmode $fh;
        print $fh $1;
        close $fh;
        push @args, '--data-binary', "\@$file";
    }
    my $timeout = parse_time(section($block, 'timeout')) || timeout();
    push @args, '--connect-timeout', $timeout, '--max-time', $timeout;
    my $opts = section($block, 'curl_options');
    push @args, split ' ', $opts if defined $opts;
    my $proto = section($block, 'curl_protocol') // 'http';
    my $addr = section($block, 'server_addr_for_client') // $ServerAddr;
    push @args, "$proto://$addr:$ServerPortForClient$uri";
    return \@args;
}

sub quote_sh_args ($) {
    my $args = shift;
    return join ' ', map {
        my $a = $_;
        $a =~ m{^[-\w./:=@,+]+$} ? $a : do { $a =~ s/'/'\\''/g; "'$a'" }
    } @$args;
}

sub send_http_req_by_curl ($$$) {
    my ($block, $req, $timeout) = @_;
    my $name = $block->name;
    require IPC::Run;
    my $cmd = curl_command($block, $req);
    my ($in, $out, $err) = ('', '', '');
    my $ok = eval {
        IPC::Run::run($cmd, \$in, \$out, \$err,
                      IPC::Run::timeout($timeout + 1));
        1;
    };
    if (!$ok) {
        if (!defined section($block, 'abort')) {
            Test::More::fail("ERROR: client socket timed out - $name\n");
        }
        return undef;
    }
    if ($out eq '') {
        my $curl_err = section($block, 'curl_error');
        if (defined $curl_err && $err ne ''
            && (ref $curl_err ? $err =~ $curl_err : index($err, $curl_err) >= 0))
        {
            return undef;
        }
        Test::More::fail("$name - command \"@$cmd\" generates "
                         . ($err ne '' ? "stderr output: $err" : "no stdout output"));
        return undef;
    }
    warn "WARNING: $name - command \"@$cmd\" generates stderr output: $err"
        if $err ne '';
    return $out;
}

# ---- responses ---------------------------------------------------------------

# Parses one response off the front of $raw: (HTTP::Response, raw header
# text, bytes after the response).  The body is delimited by chunked
# encoding, by Content-Length, or by the end of the data.
sub parse_response ($$$) {
    my ($name, $raw, $head_req) = @_;
    my $raw_headers = '';
    $raw_headers = $1 if $raw =~ /(.*?\r\n)\r\n/s;

    my $res = HTTP::Response->parse($raw);
    my $code = $res->code;
    if (defined $code && $code !~ /^\d+$/) {
        undef $code;
        $res->code(undef);
    }
    return ($res, $raw_headers) if $code && ($code == 304 || $code == 101);

    my $left;
    my $enc = $res->header('Transfer-Encoding');
    my $len = $res->header('Content-Length');
    if (defined $enc && $enc eq 'chunked') {
        my $body = $res->content // '';
        my $decoded = '';
        while (1) {
            if ($body =~ /\G0[ \t]*\r\n\r\n/gc) {
                $left = $1 if $body =~ /\G(.+)/gcs;
                last;
            }
            if ($body =~ /\G[ \t]*([A-Fa-f0-9]+)[ \t]*\r\n/gc) {
                my $size = hex $1;
                if (length($body) - pos($body) < $size) {
                    Test::More->builder->no_ending(1);
                    Test::More::fail("$name - invalid chunked data received "
                                     . "(not enought octets for the data section)");
                    return;
                }
                $decoded .= substr($body, pos($body), $size);
                pos($body) += $size;
                if ($body !~ /\G\r\n/gc) {
                    Test::More->builder->no_ending(1);
                    Test::More::fail("$name - invalid chunked data received (expected CRLF).");
                    return;
                }
            } elsif ($body =~ /\G(.+)/gcs) {
                Test::More->builder->no_ending(1);
                Test::More::fail("$name - invalid chunked body received: $1");
                return;
            } else {
                Test::More->builder->no_ending(1);
                Test::More::fail("$name - no last chunk found - $body");
                return;
            }
        }
        $res->content($decoded);
    } elsif (defined $len && $len =~ /^\d+$/) {
        my $body = $res->content // '';
        if (length $body < $len) {
            warn "WARNING: $name - response body truncated: $len expected, "
               . "but got " . length($body) . "\n" unless $head_req;
        } elsif (length $body > $len) {
            $left = substr($body, $len);
            $res->content(substr($body, 0, $len));
        }
    }
    return ($res, $raw_headers, $left);
}

# The expected value for request $idx: sections of blocks with several
# requests are arrays.
sub get_indexed_value ($$$$) {
    my ($name, $value, $idx, $need_array) = @_;
    if ($need_array) {
        return $value->[$idx] if ref $value eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected results "
                 . "should be arrays as well.");
    }
    return $value->[0] if ref $value eq 'ARRAY';
    return $value;
}

sub check_error_code ($$$$$) {
    my ($block, $res, $dry_run, $idx, $need_array) = @_;
    my $name = $block->name;
    my $got = ($res && $res->code) || '';
    SKIP: {
        Test::More::skip("$name - tests skipped due to $dry_run", 1) if $dry_run;
        if (defined(my $like = section($block, 'error_code_like'))) {
            my $val = get_indexed_value($name, $like, $idx, $need_array);
            Test::More::like($got, qr/$val/sm, "$name - status code ok");
        } elsif (defined(my $code = section($block, 'error_code'))) {
            my $want = get_indexed_value($name, $code, $idx, $need_array);
            $want =~ s/^\s+|\s+$//g if defined $want;
            Test::More::is($got, $want, "$name - status code ok");
        } else {
            Test::More::is($got, 200, "$name - status code ok");
        }
    }
}

sub check_raw_response_headers ($$$$$) {
    my ($block, $raw_headers, $dry_run, $idx, $need_array) = @_;
    my $name = $block->name;
    if (defined(my $like = section($block, 'raw_response_headers_like'))) {
        my $pat = get_indexed_value($name, $like, $idx, $need_array);
        Test::More::like($raw_headers, qr/$pat/s, "$name - raw resp headers like");
    }
    if (defined(my $unlike = section($block, 'raw_response_headers_unlike'))) {
        my $pat = get_indexed_value($name, $unlike, $idx, $need_array);
        Test::More::unlike($raw_headers, qr/$pat/s, "$name - raw resp headers unlike");
    }
}

sub check_response_headers ($$$$$$) {
    my ($block, $res, $raw_headers, $dry_run, $idx, $need_array) = @_;
    my $name = $block->name;
    if (defined(my $spec = section($block, 'response_headers'))) {
        my $headers = parse_headers(get_indexed_value($name, $spec, $idx, $need_array));
        for my $h (@$headers) {
            my ($key, $val) = @$h;
            if (!defined $val) {
                Test::More::unlike($raw_headers, qr/^\s*\Q$key\E\s*:/mi,
                                   "$name - header $key not present in the raw headers");
                next;
            }
            $val =~ s/\$ServerPort\b/$ServerPort/g;
            $val =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            my $actual = $res ? $res->header($key) : undef;
            Test::More::is($actual // '', $val, "$name - header $key ok");
        }
    } elsif (defined(my $like = section($block, 'response_headers_like'))) {
        my $headers = parse_headers(get_indexed_value($name, $like, $idx, $need_array));
        for my $h (@$headers) {
            my ($key, $val) = @$h;
            my $actual = $res ? $res->header($key) : undef;
            Test::More::like($actual // '', qr/^$val$/, "$name - header $key like ok");
        }
    }
}

sub run_filter ($$$) {
    my ($block, $filter, $content) = @_;
    return $filter->($content) if ref $filter eq 'CODE';
    my %named = (
        md5_hex => \&Digest::MD5::md5_hex, sha1_hex => \&Digest::SHA::sha1_hex,
        uc => sub { uc $_[0] }, lc => sub { lc $_[0] },
        ucfirst => sub { ucfirst $_[0] }, lcfirst => sub { lcfirst $_[0] },
        length => sub { length $_[0] },
    );
    my $f = !ref $filter && $named{$filter};
    bail_out($block->name . " - unknown filter \"$filter\" in --- response_body_filters")
        unless $f;
    return $f->($content);
}

sub transform_response_body ($$$) {
    my ($block, $res, $idx) = @_;
    return unless $res && defined $res->content;
    my $filters = section($block, 'response_body_filters');
    return unless defined $filters;
    if (!ref $filters) {
        $filters =~ s/^\s+|\s+$//gs;
        $filters = [split /\s+/, $filters];
    } elsif (ref $filters ne 'ARRAY') {
        $filters = [$filters];
    }
    if (ref $filters->[0] eq 'ARRAY') {
        $filters = $filters->[$idx]
            // bail_out($block->name . " - no response_body_filters for request $idx");
    }
    my $content = $res->content;
    $content = run_filter($block, $_, $content) for @$filters;
    $res->content($content);
}

sub check_response_body ($$$$$$) {
    my ($block, $res, $dry_run, $idx, $rep_idx, $need_array) = @_;
    my $name = $block->name;
    my $content = $res ? $res->content : undef;

    if (defined section($block, 'response_body')
        || defined section($block, 'response_body_eval'))
    {
        my $expected;
        if (defined section($block, 'response_body_eval')) {
            $expected = eval get_indexed_value($name,
                section($block, 'response_body_eval'), $idx, $need_array);
            warn $@ if $@;
        } else {
            $expected = get_indexed_value($name, section($block, 'response_body'),
                                          $idx, $need_array);
        }
        if (defined $expected && !ref $expected) {
            $expected =~ s/\$ServerPort\b/$ServerPort/g;
            $expected =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        }
        if (ref $expected) {
            Test::More::like($content, $expected,
                "$name - response_body - like (repeated req $rep_idx, req $idx)");
        } else {
            is_str($content, $expected,
                "$name - response_body - response is expected (repeated req $rep_idx, req $idx)");
        }
    } elsif (defined section($block, 'response_body_like')
             || defined section($block, 'response_body_unlike'))
    {
        my $type = defined section($block, 'response_body_like') ? 'like' : 'unlike';
        my $pat = get_indexed_value($name, section($block, "response_body_$type"),
                                    $idx, $need_array);
        $pat =~ s/\$ServerPort\b/$ServerPort/g;
        $pat =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        my $summary = trim($content) // '';
        my $desc = "$name - response_body_$type - response is expected ($summary)";
        if ($type eq 'like') {
            Test::More::like($content, qr/$pat/s, $desc);
        } else {
            Test::More::unlike($content, qr/$pat/s, $desc);
        }
    }

    for my $check (@ResponseBodyChecks) {
        $check->($block, $content, $idx, $rep_idx, $dry_run);
    }
}

sub fmt_str ($) {
    my $s = shift;
    chomp $s;
    $s =~ s/"/\\"/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

# Patterns of an error_log-like section: each line a substring, or (eval)
# a Regexp or an array of strings and Regexps.
sub patterns_of ($) {
    my $pats = shift;
    if (!ref $pats) {
        chomp $pats;
        return [split /\n+/, $pats];
    }
    return [$pats] if ref $pats eq 'Regexp';
    return [@$pats];
}

sub line_matches ($$) {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ /$pat/ : index($line, $pat) >= 0;
}

sub check_error_log ($$$$$) {
    my ($block, $res, $dry_run, $rep_idx, $need_array) = @_;
    my $name = $block->name;
    my $lines;

    my $grep_pat = section($block, 'grep_error_log');
    if (defined $grep_pat) {
        $grep_pat = $grep_pat->[$rep_idx] if ref $grep_pat eq 'ARRAY';
        my $expected = section($block, 'grep_error_log_out');
        bail_out("$name - No --- grep_error_log_out defined but --- grep_error_log is defined")
            unless defined $expected;
        $expected = $expected->[$rep_idx] if ref $expected eq 'ARRAY';
        $lines ||= error_log_data();
        my $matched = '';
        for my $line (@$lines) {
            if (ref $grep_pat ? $line =~ /$grep_pat/ : $line =~ /\Q$grep_pat\E/) {
                $matched .= "$&\n" if $& !~ /\n/;
            }
        }
        if (ref $expected eq 'Regexp') {
            Test::More::like($matched, $expected,
                             "$name - grep_error_log_out (req $rep_idx)");
        } else {
            is_str($matched, $expected, "$name - grep_error_log_out (req $rep_idx)");
        }
    } elsif (defined section($block, 'grep_error_log_out')) {
        bail_out("$name - No --- grep_error_log defined but --- grep_error_log_out is defined");
    }

    my %checked_level;
    if (defined(my $spec = section($block, 'error_log'))) {
        my $pats = patterns_of($spec);
        for my $lvl (qw(alert crit emerg)) {
            $checked_level{$lvl} = 1 if grep { index("$_", "[$lvl") >= 0 } @$pats;
        }
        $lines ||= error_log_data();
        for my $line (@$lines) {
            for my $pat (@$pats) {
                next unless defined $pat;
                if (line_matches($line, $pat)) {
                    Test::More::pass("$name - pattern \"$pat\" matches a line in error.log (req $rep_idx)");
                    undef $pat;
                }
            }
        }
        for my $pat (grep { defined } @$pats) {
            Test::More::fail("$name - pattern \"$pat\" should match a line in error.log (req $rep_idx)");
        }
    }

    if (defined(my $spec = section($block, 'no_error_log'))) {
        my $pats = patterns_of($spec);
        for my $lvl (qw(alert crit emerg)) {
            $checked_level{$lvl} = 1 if grep { index("$_", "[$lvl") >= 0 } @$pats;
        }
        $lines ||= error_log_data();
        my %found;
        for my $i (0 .. $#$lines) {
            my $line = $lines->[$i];
            for my $pat (@$pats) {
                if (line_matches($line, $pat)) {
                    Test::More->builder->no_ending(1) if $found{$pat}++;
                    my @more = @$lines[$i + 1 .. min($i + 9, $#$lines)];
                    Test::More::fail("$name - pattern \"" . fmt_str($pat)
                        . "\" should not match any line in error.log but matches line \""
                        . fmt_str($line) . "\" (req $rep_idx)\n" . join('', @more));
                }
            }
        }
        for my $pat (@$pats) {
            next if $found{$pat};
            Test::More::pass("$name - pattern \"" . fmt_str($pat)
                             . "\" does not match a line in error.log (req $rep_idx)");
        }
    }

    return if $dry_run;
    $lines ||= error_log_data();
    for my $line (@$lines) {
        for my $lvl (qw(alert crit emerg)) {
            warn "WARNING: $name - " . fmt_str($line) . "\n"
                if !$checked_level{$lvl} && $line =~ /\[$lvl\]/;
        }
        if ($line =~ /\bAssertion .*?failed\b/) {
            Test::More->builder->no_ending(1);
            chomp(my $l = $line);
            Test::More::fail("$name - $l\n");
        }
    }
}

sub check_access_log ($$$) {
    my ($block, $dry_run, $rep_idx) = @_;
    my $name = $block->name;
    my $lines;
    if (defined(my $spec = section($block, 'access_log'))) {
        my $pats = patterns_of($spec);
        $lines ||= access_log_data();
        for my $line (@$lines) {
            for my $pat (@$pats) {
                next unless defined $pat;
                if (line_matches($line, $pat)) {
                    Test::More::pass("$name - pattern \"$pat\" matches a line in access.log (req $rep_idx)");
                    undef $pat;
                }
            }
        }
        Test::More::fail("$name - pattern \"$_\" should match a line in access.log (req $rep_idx)")
            for grep { defined } @$pats;
    }
    if (defined(my $spec = section($block, 'no_access_log'))) {
        my $pats = patterns_of($spec);
        $lines ||= access_log_data();
        my %found;
        for my $line (@$lines) {
            for my $pat (@$pats) {
                if (line_matches($line, $pat)) {
                    $found{$pat}++;
                    Test::More::fail("$name - pattern \"" . fmt_str($pat)
                        . "\" should not match any line in access.log but matches line \""
                        . fmt_str($line) . "\" (req $rep_idx)");
                }
            }
        }
        Test::More::pass("$name - pattern \"" . fmt_str($_)
                         . "\" does not match a line in access.log (req $rep_idx)")
            for grep { !$found{$_} } @$pats;
    }
}

# ---- one block -------------------------------------------------------------

sub run_test_helper ($$$) {
    my ($block, $dry_run, $rep_idx) = @_;
    my $name = $block->name;

    my $reqs = get_req_from_block($block);
    bail_out("$name - request empty") unless @$reqs;

    if (defined section($block, 'curl')) {
        warn "# ", quote_sh_args(curl_command($block, $reqs->[0])), "\n";
    }

    my $timeout = parse_time(section($block, 'timeout'));
    $timeout = timeout() unless defined $timeout && $timeout ne '';

    my $pipelined = section($block, 'pipelined_requests');
    my $ignore = defined section($block, 'ignore_response');
    my $wait = section($block, 'wait');
    my ($res, $need_array, $n);
    my $idx = 0;

    for my $req (@$reqs) {
        my ($raw, $head_req);
        if (use_http2($block)) {
            $head_req = $req->[0]{value} =~ /^\s*HEAD\s+/ ? 1 : 0;
            $raw = send_http_req_by_curl($block, $req, $timeout);
        } else {
            ($raw, $head_req) = send_request($req,
                section($block, 'raw_request_middle_delay'), $timeout, $block);
        }

        if ($pipelined) {
            $n = @$pipelined;
            $need_array = 1;
        } else {
            $need_array = @$reqs > 1;
        }

        while (1) {
            $raw //= '';
            my ($raw_headers, $left);
            if (!$ignore) {
                if (defined section($block, 'http09')) {
                    $res = HTTP::Response->new(200, 'OK', [], $raw);
                    $raw_headers = '';
                } else {
                    ($res, $raw_headers, $left) = parse_response($name, $raw, $head_req);
                    $raw_headers //= '';
                }
            }
            if (!$n) {
                if (defined $left && $left ne '') {
                    (my $show = $left) =~ s/([\0-\037\200-\377])/sprintf('\x{%02x}', ord $1)/eg;
                    warn "WARNING: $name - unexpected extra bytes after last chunk in "
                       . "response: \"$show\"\n";
                }
            } else {
                $raw = $left;
                $n--;
            }

            if (!$ignore) {
                check_error_code($block, $res, $dry_run, $idx, $need_array);
                check_raw_response_headers($block, $raw_headers, $dry_run, $idx, $need_array);
                check_response_headers($block, $res, $raw_headers, $dry_run, $idx, $need_array);
                transform_response_body($block, $res, $idx);
                check_response_body($block, $res, $dry_run, $idx, $rep_idx, $need_array);
            }

            if ($n || $idx < @$reqs - 1) {
                sleep $wait if $wait;
                check_error_log($block, $res, $dry_run, $rep_idx, $need_array);
                check_access_log($block, $dry_run, $rep_idx) unless $ignore;
            }
            $idx++;
            last unless $n;
        }
    }

    sleep $wait if $wait;
    check_error_log($block, $res, $dry_run, $rep_idx, $need_array);
    check_access_log($block, $dry_run, $rep_idx) unless $ignore;
}

1;

# Shared by the module's Test::Nginx files (t/1*.t): load with
#   require "./t/llm-helper.pl";
#
# - Blocks that start nginx wait until the model is loaded: their `init`
#   polls GET <ready_path> (default /v1/health) until it answers 200.
# - `--- sse_check: N` validates a streaming body as OpenAI's SSE format
#   (N choices): one id/created, role in each choice's first chat delta,
#   a final chunk per choice with finish_reason, data: [DONE] last.
#   `--- sse_usage` also requires the include_usage chunk.
# - `--- json_check` is Perl code run with $j (the decoded body) and $body;
#   it must return true.
# - llm_streams(N, port, request) sends N requests at once on N connections
#   and returns the N raw responses (for the concurrency tests).
use strict;
use warnings;

use IO::Socket::INET ();
use IO::Select ();
use JSON::PP ();
use Time::HiRes qw(sleep time);

our @LlmHeldSockets;    # connections a block keeps open on purpose

sub llm_http_get {
    my ($port, $path) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 2) or return '';
    print $s "GET $path HTTP/1.0\r\nHost: localhost\r\n\r\n";
    local $/;
    my $res = <$s>;
    close $s;
    return $res // '';
}

sub llm_wait_ready {
    my ($path, $limit, $http2) = @_;
    $limit //= 60;
    my $port = Test::Nginx::Util::server_port_for_client();
    my $deadline = time + $limit;
    while (time < $deadline) {
        my $res = $http2
            ? scalar `curl -s -i --http2-prior-knowledge http://127.0.0.1:$port$path`
            : llm_http_get($port, $path);
        $res =~ s{^HTTP/2 }{HTTP/1.1 };
        return 1 if $res =~ m{^HTTP/1\.\d 200};
        sleep 0.05;
    }
    die "the model did not become ready within ${limit}s ($path)\n";
}

# POSTs $data (a Perl structure) as JSON; returns the decoded response body.
sub llm_json_post {
    my ($path, $data) = @_;
    my $port = Test::Nginx::Util::server_port_for_client();
    my $body = JSON::PP->new->ascii->encode($data);
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or die "connect: $!\n";
    print $s "POST $path HTTP/1.0\r\nHost: localhost\r\n"
           . "Content-Length: " . length($body) . "\r\n\r\n$body";
    local $/;
    my $res = <$s> // '';
    close $s;
    my (undef, $json) = split /\r\n\r\n/, $res, 2;
    return eval { JSON::PP::decode_json($json // '') } // {};
}

# A "--- request" for a JSON body built at run time (in an init).
sub llm_request_text {
    my ($path, $data) = @_;
    return "POST $path\n" . JSON::PP->new->ascii->encode($data);
}

# Polls GET $path until $re matches the body (or $limit seconds pass);
# returns the last body.
sub llm_poll {
    my ($path, $re, $limit) = @_;
    $limit //= 10;
    my $port = Test::Nginx::Util::server_port_for_client();
    my $deadline = time + $limit;
    my $res = '';
    while (time < $deadline) {
        $res = llm_http_get($port, $path);
        return $res if $res =~ $re;
        sleep 0.05;
    }
    return $res;
}

# Sends a raw request on a new connection and keeps it open (not read).
sub llm_hold_request {
    my ($req) = @_;
    my $port = Test::Nginx::Util::server_port_for_client();
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 2)
        or die "connect: $!\n";
    print $s $req;
    push @LlmHeldSockets, $s;
    return $s;
}

# Reads from $s until $re matches what arrived (or $limit seconds pass).
sub llm_read_until {
    my ($s, $re, $limit) = @_;
    my $got = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + ($limit // 10);
    while ($got !~ $re && time < $deadline) {
        next unless $sel->can_read(0.2);
        my $n = sysread($s, my $chunk, 65536);
        last unless $n;
        $got .= $chunk;
    }
    return $got;
}

sub llm_post {
    my ($path, $body, $extra) = @_;
    $extra //= '';
    return "POST $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
         . "Content-Type: application/json\r\n$extra"
         . "Content-Length: " . length($body) . "\r\n\r\n$body";
}

# N requests at once; returns the raw responses (read until close).
sub llm_streams {
    my ($n, $req, $limit) = @_;
    $limit //= 120;
    my $port = Test::Nginx::Util::server_port_for_client();
    my (%buf, %open);
    my $sel = IO::Select->new;
    for my $i (0 .. $n - 1) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Proto => 'tcp',
                                      Timeout => 5) or die "connect: $!\n";
        print $s $req;
        $buf{$s} = '';
        $open{$s} = $i;
        $sel->add($s);
    }
    my @out;
    my $deadline = time + $limit;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(1)) {
            my $got = sysread($s, my $chunk, 65536);
            if ($got) {
                $buf{$s} .= $chunk;
                next;
            }
            $out[$open{$s}] = $buf{$s};
            $sel->remove($s);
            close $s;
        }
    }
    return @out;
}

# Undoes chunked transfer encoding of a raw HTTP/1.1 response body.
sub llm_dechunk {
    my ($raw) = @_;
    my ($head, $body) = split /\r\n\r\n/, $raw, 2;
    return $body unless defined $head && $head =~ /^Transfer-Encoding:\s*chunked/mi;
    my $out = '';
    while ($body =~ s/^([0-9a-fA-F]+)\r\n//) {
        my $len = hex $1;
        last if $len == 0;
        $out .= substr($body, 0, $len, '');
        $body =~ s/^\r\n//;
    }
    return $out;
}

# Returns '' if $body is a well-formed OpenAI stream with $n choices,
# otherwise what is wrong.
sub llm_sse_problem {
    my ($body, $n, $want_usage) = @_;
    return 'no body' unless defined $body && length $body;
    my @events = grep { length } split /\n\n/, $body;
    my (@data, $id, $created, %role, %finished, $usage, $object);
    for my $ev (@events) {
        next if $ev =~ /^:/;                       # comments (keepalive)
        return "not an SSE data line: $ev" unless $ev =~ /^data: (.*)\z/s;
        push @data, $1;
    }
    return 'no events' unless @data;
    return "last event is not [DONE]: $data[-1]" unless $data[-1] eq '[DONE]';
    pop @data;
    for my $d (@data) {
        my $j = eval { JSON::PP::decode_json($d) };
        return "not JSON: $d" unless $j;
        return "error event: $d" if $j->{error};
        $id //= $j->{id};
        $created //= $j->{created};
        $object //= $j->{object};
        return "two ids: $id, $j->{id}" if $j->{id} ne $id;
        return "two created values" if $j->{created} != $created;
        return "object changed" if $j->{object} ne $object;
        if (!@{ $j->{choices} }) {
            return "usage chunk without usage" unless $j->{usage};
            $usage = $j->{usage};
            next;
        }
        return 'usage chunk is not last' if $usage;
        for my $c (@{ $j->{choices} }) {
            my $i = $c->{index};
            return "chunk after the final one of choice $i" if $finished{$i};
            if ($object eq 'chat.completion.chunk') {
                if (!$role{$i}) {
                    return "first delta of choice $i has no role: $d"
                        unless ($c->{delta}{role} // '') eq 'assistant';
                    $role{$i} = 1;
                }
            }
            $finished{$i} = $c->{finish_reason} if defined $c->{finish_reason};
        }
    }
    return "finished choices: " . join(',', sort keys %finished)
        unless keys %finished == $n;
    if ($want_usage) {
        return 'no usage chunk' unless $usage;
        return 'usage total does not add up'
            unless $usage->{total_tokens}
                   == $usage->{prompt_tokens} + $usage->{completion_tokens};
    }
    return '';
}

add_block_preprocessor(sub {
    my $block = shift;
    if (defined $block->config && !defined $block->init
        && !defined $block->must_die)
    {
        my $path = $block->ready_path // '/v1/health';
        my $h2 = defined $block->http2 ? 1 : 0;
        $block->set_value('init', "main::llm_wait_ready('$path', 60, $h2)");
    }
});

add_response_body_check(sub {
    my ($block, $body, $idx, $rep, $dry_run) = @_;
    my $name = $block->name;
    if (defined(my $n = $block->sse_check)) {
        $n =~ s/\s+//g;
        my $p = llm_sse_problem($body, $n, defined $block->sse_usage);
        Test::More::is($p, '', "$name - well-formed stream (req $idx)");
    }
    if (defined(my $code = $block->json_check)) {
        my $j = eval { JSON::PP::decode_json($body) };
        my $ok = $j && eval $code;
        Test::More::ok($ok, "$name - json_check (req $idx)")
            or Test::More::diag("body: " . ($body // '') . ($@ ? "\n$@" : ''));
    }
});

1;

# tools + tool_choice: <tool_call> blocks become message.tool_calls (and
# delta.tool_calls when streaming); required / named choices are enforced
# by constrained decoding, so even the tiny random model calls correctly.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

# `--- sse_json_check`: as in t/195-structured.t ($content, $finish,
# $calls = [{id, name, arguments}]).
add_response_body_check(sub {
    my ($block, $body) = @_;
    my $code = $block->sse_json_check;
    return unless defined $code;
    my ($content, $finish, $calls, $markup) = ('', undef, [], 0);
    for my $d ($body =~ /^data: (\{.*\})$/mg) {
        my $j = eval { JSON::PP->new->utf8->decode($d) } or next;
        my $c = $j->{choices}[0] or next;
        $content .= $c->{delta}{content} // '';
        $finish = $c->{finish_reason} if defined $c->{finish_reason};
        for my $tc (@{ $c->{delta}{tool_calls} // [] }) {
            my $call = $calls->[$tc->{index}] //= { arguments => '' };
            $call->{id} = $tc->{id} if defined $tc->{id};
            $call->{type} = $tc->{type} if defined $tc->{type};
            $call->{name} = $tc->{function}{name} if defined $tc->{function}{name};
            $call->{arguments} .= $tc->{function}{arguments} // '';
        }
    }
    my $ok = eval $code;
    Test::More::ok($ok, $block->name . " - sse_json_check")
        or Test::More::diag("content: $content\nbody: $body" . ($@ ? "\n$@" : ''));
});

our $tools = '[{"type":"function","function":{"name":"get_weather","description":"Weather of a city",'
    . '"parameters":{"type":"object","properties":{"city":{"type":"string"},'
    . '"unit":{"type":"string","enum":["c","f"]}},"required":["city"]}}},'
    . '{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{}}}}]';

# A call as the API returns it (non-stream entry or reassembled stream).
sub call_ok {
    my ($name, $args, $only) = @_;
    my $a = eval { JSON::PP->new->decode($args) };
    return 0 unless ref $a eq 'HASH';
    return 0 if defined $only && $name ne $only;
    if ($name eq 'get_weather') {
        return 0 unless defined $a->{city} && !ref $a->{city};
        return 0 if exists $a->{unit} && $a->{unit} !~ /^[cf]\z/;
        return 0 if grep { !/^(city|unit)$/ } keys %$a;
        return 1;
    }
    return $name eq 'get_time' && !keys %$a;
}

sub message_ok {
    my ($m, $only) = @_;
    my $calls = $m->{tool_calls};
    return 0 unless ref $calls eq 'ARRAY' && @$calls >= 1;
    return 0 if defined $m->{content};       # null next to calls
    for my $c (@$calls) {
        return 0 unless $c->{id} =~ /^call_[A-Za-z0-9]{24}\z/ && $c->{type} eq 'function';
        return 0 unless call_ok($c->{function}{name}, $c->{function}{arguments}, $only);
    }
    my %ids = map { $_->{id} => 1 } @$calls;
    return keys %ids == @$calls;
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: tool_choice required always yields valid calls
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
[map { "POST /v1/chat/completions\n"
       . '{"messages":[{"role":"user","content":"Weather in Paris?"}],"tools":' . $main::tools
       . ',"tool_choice":"required","temperature":1.0,"top_p":1.0,"seed":' . $_ . ',"max_tokens":150}' } 1 .. 6]
--- json_check
main::message_ok($j->{choices}[0]{message}) && $j->{choices}[0]{finish_reason} eq 'tool_calls'
--- no_error_log
[error]



=== TEST 2: a named function is the one called, once
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
[map { "POST /v1/chat/completions\n"
       . '{"messages":[{"role":"user","content":"What time is it?"}],"tools":' . $main::tools
       . ',"tool_choice":{"type":"function","function":{"name":"get_weather"}},'
       . '"temperature":1.0,"top_p":1.0,"seed":' . $_ . ',"max_tokens":150}' } 1 .. 4]
--- json_check
main::message_ok($j->{choices}[0]{message}, 'get_weather')
&& @{$j->{choices}[0]{message}{tool_calls}} == 1
--- no_error_log
[error]



=== TEST 3: streamed calls reassemble to the non-streamed result
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- init
main::llm_wait_ready('/v1/health', 60);
my %req = (messages => [{role => 'user', content => 'Weather?'}],
           tools => JSON::PP->new->decode($main::tools), tool_choice => 'required',
           temperature => 1.0, top_p => 1.0, seed => 77, max_tokens => 150);
$main::want = main::llm_json_post('/v1/chat/completions', \%req)->{choices}[0]{message};
$block->set_value('request', main::llm_request_text('/v1/chat/completions',
    { %req, stream => JSON::PP::true }));
--- request
POST /v1/chat/completions
{}
--- sse_check: 1
--- sse_json_check
my $w = $main::want->{tool_calls};
$finish eq 'tool_calls' && $content eq '' && @$calls == @$w && @$calls >= 1
&& !grep { my $i = $_;
           $calls->[$i]{name} ne $w->[$i]{function}{name}
           || $calls->[$i]{arguments} ne $w->[$i]{function}{arguments}
           || $calls->[$i]{id} !~ /^call_/ || $calls->[$i]{type} ne 'function'
           || !main::call_ok($calls->[$i]{name}, $calls->[$i]{arguments}) } 0 .. $#$calls
--- no_error_log
[error]



=== TEST 4: tool_choice auto with a model that writes no call: plain content
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
"POST /v1/chat/completions\n"
. '{"messages":[{"role":"user","content":"Hi"}],"tools":' . $main::tools
. ',"tool_choice":"auto","max_tokens":6,"ignore_eos":true}'
--- json_check
my $m = $j->{choices}[0]{message};
!exists $m->{tool_calls} && length($m->{content}) > 0 && $j->{choices}[0]{finish_reason} eq 'length'
--- no_error_log
[error]



=== TEST 5: bad tool_choice values are 400s naming the field
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
["POST /v1/chat/completions\n"
 . '{"messages":[{"role":"user","content":"x"}],"tool_choice":"required"}',
 "POST /v1/chat/completions\n"
 . '{"messages":[{"role":"user","content":"x"}],"tools":' . $main::tools
 . ',"tool_choice":{"type":"function","function":{"name":"nope"}}}',
 "POST /v1/chat/completions\n"
 . '{"messages":[{"role":"user","content":"x"}],"tools":' . $main::tools
 . ',"tool_choice":"always"}']
--- error_code eval
[400, 400, 400]
--- json_check
$j->{error}{param} eq 'tool_choice' && $j->{error}{type} eq 'invalid_request_error'
--- no_error_log
[error]

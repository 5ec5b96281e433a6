# response_format json_object / json_schema: constrained decoding.  The
# tiny model's weights are random, so output that parses and validates
# proves the constraint, not the model.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

# `--- sse_json_check`: Perl code run with $content (the streamed deltas'
# content joined), $finish (the finish_reason) and $calls (tool calls:
# [{id, name, arguments}] joined by index); it must return true.
add_response_body_check(sub {
    my ($block, $body) = @_;
    my $code = $block->sse_json_check;
    return unless defined $code;
    my ($content, $finish, $calls) = ('', undef, []);
    for my $d ($body =~ /^data: (\{.*\})$/mg) {
        my $j = eval { JSON::PP->new->utf8->decode($d) } or next;
        my $c = $j->{choices}[0] or next;
        $content .= $c->{delta}{content} // '';
        $finish = $c->{finish_reason} if defined $c->{finish_reason};
        for my $tc (@{ $c->{delta}{tool_calls} // [] }) {
            my $call = $calls->[$tc->{index}] //= { arguments => '' };
            $call->{id} = $tc->{id} if defined $tc->{id};
            $call->{name} = $tc->{function}{name} if defined $tc->{function}{name};
            $call->{arguments} .= $tc->{function}{arguments} // '';
        }
    }
    my $ok = eval $code;
    Test::More::ok($ok, $block->name . " - sse_json_check")
        or Test::More::diag("content: $content\nbody: $body" . ($@ ? "\n$@" : ''));
});

# The schema of the tests below and a check of a decoded value against it.
our $schema = '{"type":"object","properties":{"name":{"type":"string"},'
    . '"age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"},"maxItems":3},'
    . '"mood":{"enum":["happy","sad"]},"home":{"type":"object","properties":{"city":{"type":"string"}},'
    . '"required":["city"]}},"required":["name","age","mood"]}';

sub person_ok {
    my ($text) = @_;
    my $o = eval { JSON::PP->new->allow_nonref->decode($text) };
    return 0 unless ref $o eq 'HASH';
    return 0 if grep { !/^(name|age|tags|mood|home)$/ } keys %$o;
    return 0 unless defined $o->{name} && !ref $o->{name};
    return 0 unless defined $o->{age} && $o->{age} =~ /^-?\d+$/;
    return 0 unless defined $o->{mood} && $o->{mood} =~ /^(happy|sad)$/;
    return 0 if exists $o->{tags}
        && (ref $o->{tags} ne 'ARRAY' || @{ $o->{tags} } > 3 || grep { ref } @{ $o->{tags} });
    return 0 if exists $o->{home}
        && (ref $o->{home} ne 'HASH' || !defined $o->{home}{city} || ref $o->{home}{city}
            || keys %{ $o->{home} } != 1);
    return 1;
}

no_shuffle();
run_tests();

__DATA__

=== TEST 1: json_schema output parses and validates, seed after seed
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
[map { "POST /v1/chat/completions\n"
       . '{"messages":[{"role":"user","content":"Describe a person as JSON"}],'
       . '"temperature":1.0,"top_p":1.0,"seed":' . $_ . ',"max_tokens":150,'
       . '"response_format":{"type":"json_schema","json_schema":{"name":"person","strict":true,'
       . '"schema":' . $main::schema . '}}}' } 1 .. 8]
--- json_check
main::person_ok($j->{choices}[0]{message}{content})
&& $j->{choices}[0]{finish_reason} eq 'stop'
--- no_error_log
[error]



=== TEST 2: a budget as small as 40 tokens still closes the JSON
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
[map { "POST /v1/chat/completions\n"
       . '{"messages":[{"role":"user","content":"JSON please"}],'
       . '"temperature":1.0,"top_p":1.0,"seed":' . $_ . ',"max_tokens":40,'
       . '"response_format":{"type":"json_schema","json_schema":{"name":"person",'
       . '"schema":' . $main::schema . '}}}' } 11 .. 14]
--- json_check
main::person_ok($j->{choices}[0]{message}{content})
&& $j->{usage}{completion_tokens} <= 40
--- no_error_log
[error]



=== TEST 3: json_object gives a JSON object
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
[map { "POST /v1/chat/completions\n"
       . '{"messages":[{"role":"user","content":"Any JSON object"}],'
       . '"temperature":1.0,"top_p":1.0,"seed":' . $_ . ',"max_tokens":80,'
       . '"response_format":{"type":"json_object"}}' } 1 .. 4]
--- json_check
ref(JSON::PP->new->decode($j->{choices}[0]{message}{content})) eq 'HASH'
--- no_error_log
[error]



=== TEST 4: streamed json_schema output reassembles to valid JSON
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
"POST /v1/chat/completions\n"
. '{"messages":[{"role":"user","content":"A person"}],"stream":true,'
. '"temperature":1.0,"top_p":1.0,"seed":5,"max_tokens":150,'
. '"response_format":{"type":"json_schema","json_schema":{"name":"p","schema":' . $main::schema . '}}}'
--- sse_check: 1
--- sse_json_check
main::person_ok($content) && $finish eq 'stop'
--- no_error_log
[error]



=== TEST 5: an unsupported schema keyword is a 400 naming it
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema",
 "json_schema":{"name":"z","schema":{"type":"object","properties":{"zip":{"type":"string","pattern":"^[0-9]{5}$"}}}}}}
--- error_code: 400
--- json_check
$j->{error}{param} eq 'response_format' && $j->{error}{type} eq 'invalid_request_error'
&& $j->{error}{message} =~ /"pattern" at \$\.properties\.zip/
--- no_error_log
[error]



=== TEST 6: response_format text is plain generation
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"x"}],"max_tokens":4,"ignore_eos":true,"response_format":{"type":"text"}}
--- json_check
$j->{usage}{completion_tokens} == 4 && $j->{choices}[0]{finish_reason} eq 'length'
--- no_error_log
[error]

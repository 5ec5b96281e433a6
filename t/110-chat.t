# POST /v1/chat/completions without streaming: every request parameter.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: a chat completion
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request
POST /v1/chat/completions
{"model":"tiny","messages":[{"role":"user","content":"Hello"}],"max_tokens":5}
--- response_headers
Content-Type: application/json
--- json_check
$j->{object} eq 'chat.completion' && $j->{id} =~ /^chatcmpl-[0-9a-f]{32}$/
&& $j->{model} eq 'tiny' && $j->{created} > 1600000000
&& @{$j->{choices}} == 1 && $j->{choices}[0]{index} == 0
&& $j->{choices}[0]{message}{role} eq 'assistant'
&& length($j->{choices}[0]{message}{content}) > 0
&& $j->{choices}[0]{finish_reason} eq 'length'
&& $j->{usage}{completion_tokens} == 5 && $j->{usage}{prompt_tokens} > 0
&& $j->{usage}{total_tokens} == $j->{usage}{prompt_tokens} + 5
--- no_error_log
[error]



=== TEST 2: greedy decoding is deterministic (temperature 0, twice the same)
--- request eval
my $b = '{"messages":[{"role":"user","content":"Say something"}],"temperature":0,"max_tokens":8}';
["POST /v1/chat/completions\n$b", "POST /v1/chat/completions\n$b"]
--- response_body_like eval
['"content":"([^"]*)"', '"content":"([^"]*)"']
--- json_check
my $c = $j->{choices}[0]{message}{content};
my $ok = !exists $main::seen{t2} || $main::seen{t2} eq $c; $main::seen{t2} = $c; $ok
--- no_error_log
[error]



=== TEST 3: seed makes sampling reproducible
--- request eval
my $b = '{"messages":[{"role":"user","content":"Hi"}],"temperature":1.0,"seed":1234,"max_tokens":8}';
["POST /v1/chat/completions\n$b", "POST /v1/chat/completions\n$b"]
--- json_check
my $c = $j->{choices}[0]{message}{content};
my $ok = !exists $main::seen{t3} || $main::seen{t3} eq $c; $main::seen{t3} = $c; $ok
--- no_error_log
[error]



=== TEST 4: all sampling parameters are accepted
--- request
POST /v1/chat/completions
{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],
 "temperature":0.7,"top_p":0.9,"top_k":20,"min_p":0.05,"presence_penalty":0.5,
 "frequency_penalty":0.5,"repetition_penalty":1.1,"seed":7,"max_completion_tokens":4,
 "logit_bias":{"13":-100},"user":"u1","some_future_field":{"x":[1,2]}}
--- json_check
$j->{usage}{completion_tokens} <= 4 && $j->{choices}[0]{finish_reason} =~ /^(length|stop)$/
--- no_error_log
[error]



=== TEST 5: max_completion_tokens wins over max_tokens
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}],"max_tokens":9,"max_completion_tokens":2,"ignore_eos":true}
--- json_check
$j->{usage}{completion_tokens} == 2 && $j->{choices}[0]{finish_reason} eq 'length'
--- no_error_log
[error]



=== TEST 6: n = 3 gives three choices, usage counts the prompt once
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}],"n":3,"max_tokens":3,"ignore_eos":true}
--- json_check
@{$j->{choices}} == 3 && join(',', map { $_->{index} } @{$j->{choices}}) eq '0,1,2'
&& $j->{usage}{completion_tokens} == 9
&& $j->{usage}{total_tokens} == $j->{usage}{prompt_tokens} + 9
--- no_error_log
[error]



=== TEST 7: logprobs and top_logprobs
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"ignore_eos":true,"logprobs":true,"top_logprobs":2}
--- json_check
my $c = $j->{choices}[0]{logprobs}{content};
@$c == 3 && !grep { !defined $_->{token} || $_->{logprob} > 0 || @{$_->{top_logprobs}} != 2
                    || ref $_->{bytes} ne 'ARRAY' } @$c
--- no_error_log
[error]



=== TEST 8: without logprobs the field is null
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1}
--- response_body_like: "logprobs":null
--- no_error_log
[error]



=== TEST 9: a stop string ends the text and is not included
--- init
# the greedy text of a prompt, then the same request with a stop string
# taken from its middle
my %req = (messages => [{role => 'user', content => 'Tell'}], temperature => 0,
           max_tokens => 12, ignore_eos => JSON::PP::true);
my $text = main::llm_json_post('/v1/chat/completions', \%req)->{choices}[0]{message}{content} // '';
my $cut = substr($text, int(length($text) / 2), 1);
$main::stop_expect = substr($text, 0, index($text, $cut));
$main::stop_cut = $cut;
$block->set_value('request', main::llm_request_text('/v1/chat/completions',
    { %req, stop => ['never-seen-stop', $cut] }));
--- request
POST /v1/chat/completions
{}
--- json_check
my $c = $j->{choices}[0];
length($main::stop_cut) == 1 && $c->{finish_reason} eq 'stop'
&& $c->{message}{content} eq $main::stop_expect && $c->{stop_reason} eq $main::stop_cut
--- no_error_log
[error]



=== TEST 10: include_stop_str_in_output keeps the stop string
--- init
my %req = (messages => [{role => 'user', content => 'Tell'}], temperature => 0,
           max_tokens => 12, ignore_eos => JSON::PP::true);
$block->set_value('request', main::llm_request_text('/v1/chat/completions',
    { %req, stop => $main::stop_cut, include_stop_str_in_output => JSON::PP::true }));
--- request
POST /v1/chat/completions
{}
--- json_check
$j->{choices}[0]{message}{content} eq $main::stop_expect . $main::stop_cut
--- no_error_log
[error]



=== TEST 11: stop_token_ids end generation at that token
--- init
# the first greedy token's id, through logprobs and /tokenize
my %req = (messages => [{role => 'user', content => 'Tell'}], temperature => 0,
           max_tokens => 6, ignore_eos => JSON::PP::true, logprobs => JSON::PP::true);
my $first = main::llm_json_post('/v1/chat/completions', \%req)->{choices}[0]{logprobs}{content}[0]{token};
my $ids = main::llm_json_post('/v1/tokenize', { prompt => $first })->{tokens} // [];
$main::stop_id = $ids->[0];
delete $req{logprobs};
$block->set_value('request', main::llm_request_text('/v1/chat/completions',
    { %req, stop_token_ids => [$main::stop_id] }));
--- request
POST /v1/chat/completions
{}
--- json_check
my $c = $j->{choices}[0];
$c->{finish_reason} eq 'stop' && $c->{stop_reason} == $main::stop_id
&& $c->{message}{content} eq '' && $j->{usage}{completion_tokens} == 1
--- no_error_log
[error]



=== TEST 12: content as an array of text parts, developer and tool roles
--- request
POST /v1/chat/completions
{"messages":[{"role":"developer","content":"Be brief."},
 {"role":"user","content":[{"type":"text","text":"Hello"},{"type":"text","text":"there"}]},
 {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"a\":1}"}}]},
 {"role":"tool","tool_call_id":"c1","content":"42"}],"max_tokens":2}
--- json_check
$j->{object} eq 'chat.completion'
--- no_error_log
[error]



=== TEST 13: tools and chat_template_kwargs go through the template
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Weather?"}],
 "tools":[{"type":"function","function":{"name":"get_weather","description":"Get weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
 "tool_choice":"auto","chat_template_kwargs":{"enable_thinking":false},"max_tokens":2}
--- json_check
$j->{usage}{prompt_tokens} > 40
--- no_error_log
[error]



=== TEST 14: an unknown model name is a 404 with model_not_found
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}
--- error_code: 404
--- json_check
$j->{error}{code} eq 'model_not_found' && $j->{error}{param} eq 'model'
&& $j->{error}{message} =~ /gpt-4o/



=== TEST 15: sampling parameters act: top_k 1 and min_p 1 are greedy; penalties and logit_bias change it
--- init
my %base = (messages => [{role => 'user', content => 'Tell'}], max_tokens => 6,
            ignore_eos => JSON::PP::true, temperature => 0);
my $g = main::llm_json_post('/v1/chat/completions', { %base, logprobs => JSON::PP::true });
$main::greedy = $g->{choices}[0]{message}{content};
my $first = $g->{choices}[0]{logprobs}{content}[0]{token};
my $ids = main::llm_json_post('/v1/tokenize', { prompt => $first, add_special_tokens => JSON::PP::false })->{tokens};
$block->set_value('request', [
    main::llm_request_text('/v1/chat/completions', { %base, temperature => 1, top_k => 1, seed => 5 }),
    main::llm_request_text('/v1/chat/completions', { %base, temperature => 1, min_p => 1, seed => 5 }),
    main::llm_request_text('/v1/chat/completions', { %base, frequency_penalty => 2 }),
    main::llm_request_text('/v1/chat/completions', { %base, repetition_penalty => 2 }),
    main::llm_request_text('/v1/chat/completions', { %base, logit_bias => { $ids->[0] => -100 } }),
]);
--- request eval
["GET /v1/models", "GET /v1/models", "GET /v1/models", "GET /v1/models", "GET /v1/models"]
--- json_check
my $c = $j->{choices}[0]{message}{content};
length($main::greedy) > 0 && ($idx < 2 ? $c eq $main::greedy : $c ne $main::greedy)
--- no_error_log
[error]



=== TEST 16: served_name is the model's API name
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m served_name=org/tiny-chat;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
["POST /v1/chat/completions\n" . '{"model":"org/tiny-chat","messages":[{"role":"user","content":"Hi"}],"max_tokens":1}',
 "GET /v1/models"]
--- response_body_like eval
['"model":"org/tiny-chat"', '"id":"org/tiny-chat"']
--- no_error_log
[error]



=== TEST 17: llm_max_tokens is the default and the cap
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    llm_max_tokens 3;
    location /v1/ { llm_pass tiny; }
--- request eval
["POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"ignore_eos":true}',
 "POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"Hi"}],"ignore_eos":true,"max_tokens":50}']
--- json_check
$j->{usage}{completion_tokens} == 3 && $j->{choices}[0]{finish_reason} eq 'length'
--- no_error_log
[error]

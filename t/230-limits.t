# Request limits and the API key's scope (docs/security.md): each limit is a
# 400 with an OpenAI error body naming the field, found before the engine
# sees the request, and a good request right after a bad one still works.
# The 413 for client_max_body_size (plain and chunked) is t/140-errors.t
# TEST 10-11; here once more, followed by a good request.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: invalid UTF-8 anywhere in the body: one 400 naming the byte
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request eval
my $m = '"messages":[{"role":"user","content":"Hi"}]';
["POST /v1/chat/completions\n" . qq({"messages":[{"role":"user","content":"caf\xe9"}]}),
 "POST /v1/chat/completions\n" . qq({"model":"\xff",$m}),
 "POST /v1/chat/completions\n" . qq({$m,"stop":["ok","\xc0\xaf"]}),
 "POST /v1/chat/completions\n" . qq({"\xfe":1,$m}),
 "POST /v1/completions\n" . qq({"prompt":"\xed\xa0\x80"}),
 "POST /v1/tokenize\n" . qq({"prompt":"a\x80"}),
 "POST /v1/detokenize\n" . qq({"tokens":[1],"x":"\xf8"}),
 "POST /v1/chat/completions\n" . qq({$m,"max_tokens":1,"stop":["\xc3\xa9"]})]
--- error_code eval
[(400) x 7, 200]
--- json_check
my @at = (42, 10, 59, 2, 11, 12, 19);
$idx == 7 ? $j->{object} eq 'chat.completion'
: $j->{error}{type} eq 'invalid_request_error' && $j->{error}{code} eq 'invalid_utf8'
  && exists $j->{error}{param} && !defined $j->{error}{param}
  && $j->{error}{message} eq "invalid UTF-8 at byte $at[$idx] of the request body"
--- no_error_log
[error]



=== TEST 2: a \u0000 escape or a NUL byte is refused (C strings would end there)
--- request eval
["POST /v1/chat/completions\n" . '{"messages":[{"role":"user","content":"a\u0000b"}]}',
 "POST /v1/completions\n" . qq({"prompt":"a\x00b"}),
 "POST /v1/tokenize\n" . '{"prompt":"x","model":"ti\u0000ny"}',
 "POST /v1/completions\n" . '{"prompt":"a\\\\u0000b","max_tokens":1}']
--- error_code eval
[400, 400, 400, 200]
--- json_check
[sub { $j->{error}{code} eq 'invalid_value' && $j->{error}{message} =~ /\\u0000 \(at byte 40 / },
 sub { $j->{error}{code} eq 'invalid_json' && $j->{error}{message} =~ /NUL byte at byte 12\b/ },
 sub { $j->{error}{code} eq 'invalid_value' && $j->{error}{message} =~ /\\u0000/ },
 sub { $j->{object} eq 'text_completion' }]->[$idx]->()
--- no_error_log
[error]



=== TEST 3: JSON nesting: 64 levels pass, 65 and 100000 are a 400 before parsing
--- request eval
my $m = '"messages":[{"role":"user","content":"Hi"}],"max_tokens":1';
my $nest = sub { my $d = shift; '{' . $m . ',"x":' . ('[' x ($d - 1)) . (']' x ($d - 1)) . '}' };
["POST /v1/chat/completions\n" . $nest->(64),
 "POST /v1/chat/completions\n" . $nest->(65),
 "POST /v1/completions\n" . $nest->(100000),
 "POST /v1/tokenize\n" . $nest->(65),
 "POST /v1/chat/completions\n" . '{' . $m . ',"x":"' . ('[' x 100) . '"}']
--- error_code eval
[200, 400, 400, 400, 200]
--- json_check
$idx == 0 || $idx == 4 ? $j->{object} eq 'chat.completion'
: $j->{error}{code} eq 'nesting_too_deep' && $j->{error}{type} eq 'invalid_request_error'
  && $j->{error}{message} =~ /more than 64 levels/
--- no_error_log
[error]



=== TEST 4: counts and sizes name the field; a good request follows
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; llm_max_n 2; }
--- request eval
my $u = '{"role":"user","content":"Hi"}';
my $m = qq("messages":[$u]);
my $tool = '{"type":"function","function":{"name":"f"}}';
my $part = '{"type":"text","text":"p"}';
my %bias = map { ($_ => 1) } 0 .. 1024;
my @b = (
  '{"messages":[' . CORE::join(',', ($u) x 4097) . ']}',
  '{"messages":[{"role":"user","content":[' . CORE::join(',', ($part) x 257) . ']}]}',
  qq({$m,"tools":[) . CORE::join(',', ($tool) x 129) . ']}',
  qq({$m,"stop":[) . CORE::join(',', ('"s"') x 17) . ']}',
  qq({$m,"stop":") . ('x' x 1025) . '"}',
  qq({$m,"stop":["a",") . ('x' x 1025) . '"]}',
  qq({$m,"logit_bias":{) . CORE::join(',', map { qq("$_":1) } 0 .. 1024) . '}}',
  qq({$m,"model":") . ('m' x 201) . '"}',
  qq({$m,"logprobs":true,"top_logprobs":21}),
  qq({$m,"n":3}),
);
[(map { "POST /v1/chat/completions\n$_" } @b),
 "POST /v1/tokenize\n" . qq({$m,"tools":[) . CORE::join(',', ($tool) x 129) . ']}',
 "POST /v1/chat/completions\n" . qq({$m,"max_tokens":1,"n":2,"stop":[) . CORE::join(',', ('"s"') x 16) . '],"tools":['
   . CORE::join(',', ($tool) x 128) . '],"logit_bias":{' . CORE::join(',', map { qq("$_":0) } 0 .. 1023) . '}}']
--- error_code eval
[(400) x 11, 200]
--- json_check
my @params = ('messages', 'messages[0].content', 'tools', 'stop', 'stop', 'stop',
              'logit_bias', 'model', 'top_logprobs', 'n', 'tools');
my @what = (qr/at most 4096 entries, got 4097/, qr/at most 256 parts, got 257/,
            qr/at most 128 entries, got 129/, qr/at most 16 entries, got 17/,
            qr/at most 1024 bytes, got 1025/, qr/entry 1 has 1025/,
            qr/at most 1024 entries, got 1025/, qr/at most 200 bytes, got 201/,
            qr/between 0 and 20/, qr/between 1 and 2\b/, qr/at most 128 entries/);
$idx == 11 ? $j->{object} eq 'chat.completion' && @{$j->{choices}} == 2
: $j->{error}{type} eq 'invalid_request_error' && $j->{error}{param} eq $params[$idx]
  && $j->{error}{code} eq 'invalid_value' && $j->{error}{message} =~ $what[$idx]
--- no_error_log
[error]



=== TEST 5: max_tokens over llm_max_tokens is lowered, not refused
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; llm_max_tokens 3; }
--- request
POST /v1/completions
{"prompt":"Hi","max_tokens":100000,"ignore_eos":true}
--- json_check
$j->{usage}{completion_tokens} == 3 && $j->{choices}[0]{finish_reason} eq 'length'
--- no_error_log
[error]



=== TEST 6: a logit_bias id outside the vocabulary is a 400, then a good request
--- request eval
["POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":1,"logit_bias":{"999999":5}}',
 "POST /v1/completions\n" . '{"prompt":[9,151936],"max_tokens":1}',
 "POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":1,"logit_bias":{"1":5}}']
--- error_code eval
[400, 400, 200]
--- json_check
$idx == 2 ? $j->{object} eq 'text_completion'
: $idx == 1 ? $j->{error}{type} eq 'invalid_request_error'
              && $j->{error}{param} eq 'prompt'
              && $j->{error}{message} =~ /\b151936\b/
: $j->{error}{type} eq 'invalid_request_error'
  && $j->{error}{param} eq 'logit_bias' && $j->{error}{message} =~ /\b999999\b/
--- no_error_log
[error]



=== TEST 7: 413 over client_max_body_size as JSON, then a good request
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; client_max_body_size 1k; }
--- request eval
["POST /v1/completions\n" . '{"prompt":"' . ('x' x 2000) . '"}',
 "POST /v1/completions\n" . '{"prompt":"Hi","max_tokens":1}']
--- error_code eval
[413, 200]
--- json_check
$idx == 1 ? $j->{object} eq 'text_completion'
: $j->{error}{code} eq 'request_too_large' && $j->{error}{type} eq 'invalid_request_error'



=== TEST 8: an unknown route with bytes that are not UTF-8 is a valid JSON 404
--- request eval
["GET /v1/%FF%FE" . ('%C3' x 150), "PUT /v1/%E4%B8/models", "GET /v1/models/ti%FFny"]
--- error_code eval
[404, 405, 404]
--- json_check
$idx == 0 ? $j->{error}{code} eq 'not_found' && $j->{error}{message} =~ /^Unknown route: \/v1\/\x{FFFD}\x{FFFD}/
  && length($j->{error}{message}) < 120
: $idx == 1 ? $j->{error}{code} eq 'method_not_allowed'
: $j->{error}{code} eq 'model_not_found' && $j->{error}{message} =~ /'ti\x{FFFD}ny'/
--- no_error_log
[error]



=== TEST 9: with llm_api_key, only /health is open by default
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    llm_api_key sk-secret;
    location /v1/ { llm_pass tiny; }
--- request eval
["GET /v1/health", "GET /v1/metrics", "GET /v1/models", "GET /v1/models/tiny", "GET /v1/version",
 "POST /v1/tokenize\n{\"prompt\":\"Hi\"}", "POST /v1/detokenize\n{\"tokens\":[1]}",
 "POST /v1/completions\n{\"prompt\":\"Hi\",\"max_tokens\":1}",
 "GET /v1/metrics", "POST /v1/tokenize\n{\"prompt\":\"Hi\"}", "GET /v1/version"]
--- more_headers eval
[("") x 8, ("Authorization: Bearer sk-secret") x 3]
--- error_code eval
[200, (401) x 7, 200, 200, 200]
--- response_headers eval
["!WWW-Authenticate", ("WWW-Authenticate: Bearer") x 7, ("!WWW-Authenticate") x 3]
--- response_body_like eval
['^$', ('"code":"invalid_api_key"') x 7, 'llm:num_requests_running', '"tokens":', '"version"']
--- no_error_log
[error]



=== TEST 10: llm_api_key_exempt opens routes, inherited; off closes /health too
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    llm_api_key sk-secret;
    llm_api_key_exempt health metrics models tokenize version;
    location /v1/ { llm_pass tiny; }
    location /closed/ { llm_pass tiny; llm_api_key_exempt off; }
    location /scrape/ { llm_pass tiny; llm_api_key_exempt metrics; }
--- request eval
["GET /v1/metrics", "GET /v1/models/tiny", "POST /v1/detokenize\n{\"tokens\":[1]}", "GET /v1/version",
 "POST /v1/chat/completions\n{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":1}",
 "GET /closed/health", "GET /closed/metrics", "GET /scrape/metrics", "GET /scrape/health"]
--- error_code eval
[200, 200, 200, 200, 401, 401, 401, 200, 401]
--- response_body_like eval
['llm:', '"id":"tiny"', '"prompt":', '"version"', ('"invalid_api_key"') x 3, 'llm:', '"invalid_api_key"']
--- no_error_log
[error]



=== TEST 11: keys of another length, prefixes and extensions of the key are refused
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    llm_api_key sk-secret;
    location /v1/ { llm_pass tiny; }
--- request eval
[("GET /v1/models") x 8]
--- more_headers eval
["Authorization: Bearer sk-secre", "Authorization: Bearer sk-secretsk-secret",
 "Authorization: Bearer sk-secretX", "Authorization: Bearer s",
 "Authorization: Bearer sk-secreT", "Authorization: Bearer xk-secret",
 "Authorization: Basic c2stc2VjcmV0", "Authorization: bearer   sk-secret"]
--- error_code eval
[(401) x 7, 200]
--- no_error_log
[error]



=== TEST 12: llm_api_key_exempt: a bad value names itself
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR;
--- config
    location /v1/ { llm_pass tiny; llm_api_key_exempt health chat; }
--- must_die
--- error_log
llm_api_key_exempt: invalid value "chat" (health, metrics, models, tokenize, version or off)



=== TEST 13: llm_api_key_exempt: off with routes
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR;
--- config
    location /v1/ { llm_pass tiny; llm_api_key_exempt off metrics; }
--- must_die
--- error_log
llm_api_key_exempt: "off" cannot be combined with routes



=== TEST 14: an empty key is a configuration error
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR;
--- config
    location /v1/ { llm_pass tiny; llm_api_key ""; }
--- must_die
--- error_log
llm_api_key: the key is empty

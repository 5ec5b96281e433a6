# POST /v1/completions: prompt forms, echo, legacy logprobs, streaming.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: a text completion
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request
POST /v1/completions
{"model":"tiny","prompt":"Once upon a time","max_tokens":5,"ignore_eos":true}
--- json_check
$j->{object} eq 'text_completion' && $j->{id} =~ /^cmpl-[0-9a-f]{32}$/
&& @{$j->{choices}} == 1 && length($j->{choices}[0]{text}) > 0
&& $j->{choices}[0]{finish_reason} eq 'length' && !defined $j->{choices}[0]{logprobs}
&& $j->{usage}{completion_tokens} == 5 && $j->{usage}{prompt_tokens} == 4
--- no_error_log
[error]



=== TEST 2: an array of prompts gives one choice per prompt (times n)
--- request
POST /v1/completions
{"prompt":["Hello","Good morning to you"],"n":2,"max_tokens":2,"ignore_eos":true}
--- json_check
@{$j->{choices}} == 4 && join(',', map { $_->{index} } @{$j->{choices}}) eq '0,1,2,3'
&& $j->{usage}{completion_tokens} == 8
--- no_error_log
[error]



=== TEST 3: a prompt of token ids, and an array of them
--- request eval
["POST /v1/completions\n" . '{"prompt":[9707,1879],"max_tokens":2,"echo":true}',
 "POST /v1/completions\n" . '{"prompt":[[9707],[9707,1879]],"max_tokens":1}']
--- json_check
($j->{usage}{prompt_tokens} == 2 && $j->{choices}[0]{text} =~ /^Hello world/)
|| (@{$j->{choices}} == 2 && $j->{usage}{prompt_tokens} == 3)
--- no_error_log
[error]



=== TEST 4: echo puts the prompt before the completion
--- request
POST /v1/completions
{"prompt":"Hello world","max_tokens":3,"echo":true}
--- json_check
$j->{choices}[0]{text} =~ /^Hello world./s
--- no_error_log
[error]



=== TEST 5: legacy logprobs: tokens, token_logprobs, top_logprobs, text_offset
--- request
POST /v1/completions
{"prompt":"Hello world","max_tokens":4,"ignore_eos":true,"logprobs":2}
--- json_check
my $lp = $j->{choices}[0]{logprobs};
my $text = $j->{choices}[0]{text};
@{$lp->{tokens}} == 4 && @{$lp->{token_logprobs}} == 4 && @{$lp->{top_logprobs}} == 4
&& @{$lp->{text_offset}} == 4 && $lp->{text_offset}[0] == 0
&& join('', @{$lp->{tokens}}) eq $text
&& !grep({ $_ > 0 } @{$lp->{token_logprobs}})
&& !grep({ ref $_ ne 'HASH' || keys(%$_) < 1 || keys(%$_) > 2 } @{$lp->{top_logprobs}})
&& !grep({ $lp->{text_offset}[$_] != length(join '', @{$lp->{tokens}}[0 .. $_ - 1]) } 1 .. 3)
--- no_error_log
[error]



=== TEST 6: echo with logprobs: prompt tokens first, their logprob null
--- request
POST /v1/completions
{"prompt":"Hello world","max_tokens":2,"ignore_eos":true,"echo":true,"logprobs":1}
--- json_check
my $lp = $j->{choices}[0]{logprobs};
@{$lp->{tokens}} == 4 && $lp->{tokens}[0] eq 'Hello' && $lp->{tokens}[1] eq ' world'
&& !defined $lp->{token_logprobs}[0] && defined $lp->{token_logprobs}[2]
&& $lp->{text_offset}[1] == 5 && $lp->{text_offset}[2] == 11
&& join('', @{$lp->{tokens}}) eq $j->{choices}[0]{text}
--- no_error_log
[error]



=== TEST 7: logprobs 0 gives the sampled token's logprob only
--- request
POST /v1/completions
{"prompt":"Hello","max_tokens":2,"ignore_eos":true,"logprobs":0}
--- json_check
my $lp = $j->{choices}[0]{logprobs};
@{$lp->{token_logprobs}} == 2 && !grep({ keys %$_ } @{$lp->{top_logprobs}})
--- no_error_log
[error]



=== TEST 8: a streamed completion
--- request
POST /v1/completions
{"prompt":"Hello","max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}
--- response_headers
Content-Type: text/event-stream
--- sse_check: 1
--- sse_usage
--- response_body_like: "object":"text_completion"
--- no_error_log
[error]



=== TEST 9: streamed completions for two prompts
--- request
POST /v1/completions
{"prompt":["Hello","Bye"],"max_tokens":3,"stream":true,"logprobs":1}
--- sse_check: 2
--- response_body_like: "logprobs":\{"tokens":\[
--- no_error_log
[error]



=== TEST 10: a stop string that never matches, and min_tokens, leave max_tokens in charge
--- request
POST /v1/completions
{"prompt":"Hello","max_tokens":5,"stop":["zzqq-never"],"min_tokens":2,"ignore_eos":true,"temperature":0}
--- json_check
$j->{usage}{completion_tokens} == 5
--- no_error_log
[error]

# Streaming (SSE) responses: OpenAI's chunk format, headers, include_usage,
# n > 1, HTTP/1.0 and HTTP/2 clients, keep-alive comments.
use Test::Nginx::Socket 'no_plan';
require "./t/llm-helper.pl";

no_shuffle();
log_level('info');
run_tests();

__DATA__

=== TEST 1: a streamed chat completion
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":6,"stream":true}
--- response_headers
Content-Type: text/event-stream
Cache-Control: no-cache
X-Accel-Buffering: no
!Content-Length
--- sse_check: 1
--- response_body_like: ^data: \{"id":"chatcmpl-[0-9a-f]{32}","object":"chat\.completion\.chunk","created":\d+,"model":"tiny","choices":\[\{"index":0,"delta":\{"role":"assistant","content":""\},"logprobs":null,"finish_reason":null\}\]\}\n\n.*"delta":\{\},"logprobs":null,"finish_reason":"length".*\n\ndata: \[DONE\]\n\n\z
--- no_error_log
[error]



=== TEST 2: HTTP/1.1 streams use chunked transfer encoding
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":3,"stream":true}
--- response_headers
Transfer-Encoding: chunked
--- sse_check: 1
--- no_error_log
[error]



=== TEST 3: stream_options.include_usage adds a usage chunk with no choices
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}
--- sse_check: 1
--- sse_usage
--- response_body_like: "choices":\[\],"usage":\{"prompt_tokens":\d+,"completion_tokens":4,"total_tokens":\d+
--- no_error_log
[error]



=== TEST 4: without include_usage there is no usage field
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":2,"stream":true}
--- response_body_unlike: "usage"
--- no_error_log
[error]



=== TEST 5: n = 2 streams both choices, each with role first and its own final chunk
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":4,"n":2,"stream":true,"stream_options":{"include_usage":true}}
--- sse_check: 2
--- sse_usage
--- no_error_log
[error]



=== TEST 6: streamed logprobs
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":3,"stream":true,"logprobs":true,"top_logprobs":1}
--- sse_check: 1
--- response_body_like: "logprobs":\{"content":\[\{"token":"[^"]*","logprob":-?[\d.e-]+,"bytes":\[[\d,]*\],"top_logprobs":\[\{"token"
--- no_error_log
[error]



=== TEST 7: an HTTP/1.0 client gets a close-delimited stream
--- request
POST /v1/chat/completions HTTP/1.0
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":5,"stream":true}
--- response_headers
Content-Type: text/event-stream
!Transfer-Encoding
!Content-Length
--- sse_check: 1
--- no_error_log
[error]



=== TEST 8: a streamed completion with echo starts with the prompt
--- request
POST /v1/completions
{"prompt":"Once upon","max_tokens":3,"echo":true,"stream":true,"stream_options":{"include_usage":true}}
--- sse_check: 1
--- sse_usage
--- response_body_like: ^data: \{"id":"cmpl-[0-9a-f]{32}","object":"text_completion","created":\d+,"model":"tiny","choices":\[\{"index":0,"text":"Once upon","logprobs":null,"finish_reason":null\}\]
--- no_error_log
[error]



=== TEST 9: keep-alive comments while the stream is open
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    llm_sse_keepalive 1ms;
    location /v1/ { llm_pass tiny; }
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":400,"ignore_eos":true,"stream":true}
--- timeout: 30
--- sse_check: 1
--- response_body_like: \n\n: keepalive\n\n
--- no_error_log
[error]



=== TEST 10: HTTP/2 streams
--- http2
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}
--- response_headers
Content-Type: text/event-stream
--- sse_check: 1
--- sse_usage
--- no_error_log
[error]



=== TEST 11: HTTP/2 without streaming
--- http2
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"Hello"}],"max_tokens":3}
--- json_check
$j->{object} eq 'chat.completion' && $j->{usage}{completion_tokens} >= 1
--- no_error_log
[error]



=== TEST 12: a token without text still gets its chunk (empty text)
The bias makes every token id 151935, a padding id of the vocabulary with
no text: chunks with "text":"" before the one with the reason, so a client
can time the first token and the gaps between tokens (one to three: tokens
the worker has not taken yet share one chunk).
--- http_config
    llm_model tiny $TEST_NGINX_MODEL_DIR threads=1 kv_cache=64m;
--- config
    location /v1/ { llm_pass tiny; }
--- request
POST /v1/completions
{"prompt":"Hello","max_tokens":3,"temperature":0,"logit_bias":{"151935":100},"stream":true}
--- sse_check: 1
--- response_body_like: ^(data: \{[^\n]*"choices":\[\{"index":0,"text":"","logprobs":null,"finish_reason":null[^\n]*\}\n\n){1,3}data: \{[^\n]*"finish_reason":"length"[^\n]*\n\ndata: \[DONE\]\n\n\z
--- no_error_log
[error]

// End-to-end with the official `openai` npm client (t/e2e/package.json pins
// it): starts the system nginx with the built module on a free port in a
// temporary prefix, then streams a chat completion, makes a non-streaming
// one and a completion, and checks that a 400 surfaces as an APIError.
//
//   node --test t/e2e/openai.test.mjs
// Environment: LLM_BUILD_DIR (default build), TEST_NGINX_BINARY (nginx),
// TEST_NGINX_MODEL_DIR (default t/fixtures/tiny-qwen3).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startServer } from './lib/server.mjs';

let server;
let client;

before(async () => {
  server = await startServer();
  client = new OpenAI({ baseURL: server.baseURL, apiKey: 'unused',
                        maxRetries: 0, timeout: 60000 });
});

after(() => server?.stop());

test('streams a chat completion', async () => {
  const stream = await client.chat.completions.create({
    model: 'tiny',
    messages: [{ role: 'user', content: 'Hello' }],
    max_tokens: 8,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let role = null;
  let finish = null;
  let usage = null;
  const ids = new Set();
  for await (const chunk of stream) {
    ids.add(chunk.id);
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) text += c.delta.content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(ids.size, 1);
  assert.equal(role, 'assistant');
  assert.ok(text.length > 0);
  assert.ok(['stop', 'length'].includes(finish));
  assert.ok(usage && usage.completion_tokens > 0
            && usage.total_tokens === usage.prompt_tokens + usage.completion_tokens);
});

test('makes a non-streaming chat completion', async () => {
  const r = await client.chat.completions.create({
    model: 'tiny',
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }],
    max_tokens: 4,
    temperature: 0,
    n: 2,
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices.length, 2);
  assert.equal(r.choices[0].message.role, 'assistant');
  // greedy: both choices are the same text
  assert.equal(r.choices[0].message.content, r.choices[1].message.content);
  assert.ok(r.usage.completion_tokens >= 2);
});

test('makes a completion', async () => {
  const r = await client.completions.create({
    model: 'tiny',
    prompt: 'Once upon a time',
    max_tokens: 4,
    echo: true,
    logprobs: 1,
  });
  assert.equal(r.object, 'text_completion');
  assert.ok(r.choices[0].text.startsWith('Once upon a time'));
  assert.equal(r.choices[0].logprobs.tokens.join(''), r.choices[0].text);
});

test('lists the model', async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  assert.deepEqual(models, ['tiny']);
});

test('a 400 is an APIError', async () => {
  await assert.rejects(
    client.chat.completions.create({
      model: 'tiny',
      messages: [{ role: 'user', content: 'Hi' }],
      temperature: 5,
    }),
    (e) => {
      assert.ok(e instanceof OpenAI.APIError, `not an APIError: ${e}`);
      assert.ok(e instanceof OpenAI.BadRequestError);
      assert.equal(e.status, 400);
      assert.equal(e.param, 'temperature');
      assert.equal(e.type, 'invalid_request_error');
      return true;
    },
  );
});

test('a 404 for an unknown model is a NotFoundError', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-x', messages: [{ role: 'user', content: 'Hi' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found',
  );
});

// End-to-end tool calling and structured output with the official `openai`
// npm client: forced tool calls (non-streaming, and streamed through the
// client's ChatCompletionStream, which must assemble the same calls), and
// response_format json_schema through chat.completions.parse().  The tiny
// model is random: valid output is the constraint's doing.
//
//   node --test t/e2e/tools.test.mjs
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

const tools = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' },
      unit: { type: 'string', enum: ['c', 'f'] } }, required: ['city'] } } },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];

function checkCall(call) {
  assert.match(call.id, /^call_[A-Za-z0-9]{24}$/);
  assert.equal(call.type, 'function');
  const args = JSON.parse(call.function.arguments);
  if (call.function.name === 'get_weather') {
    assert.equal(typeof args.city, 'string');
    if ('unit' in args) assert.ok(['c', 'f'].includes(args.unit));
  } else {
    assert.equal(call.function.name, 'get_time');
    assert.deepEqual(args, {});
  }
}

test('tool_choice required: valid calls, finish_reason tool_calls', async () => {
  for (let seed = 1; seed <= 4; seed++) {
    const r = await client.chat.completions.create({
      model: 'tiny', messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools, tool_choice: 'required', temperature: 1, top_p: 1, seed, max_tokens: 150,
    });
    const m = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    assert.equal(m.content, null);
    assert.ok(m.tool_calls.length >= 1);
    m.tool_calls.forEach(checkCall);
  }
});

test('a named function, streamed, assembles to the non-streamed call', async () => {
  const params = {
    model: 'tiny', messages: [{ role: 'user', content: 'Weather?' }], tools,
    tool_choice: { type: 'function', function: { name: 'get_weather' } },
    temperature: 1, top_p: 1, seed: 42, max_tokens: 150,
  };
  const whole = await client.chat.completions.create(params);
  const stream = client.chat.completions.stream(params);
  let sawMarkup = false;
  stream.on('content', (delta) => { if (delta.includes('<tool_call>')) sawMarkup = true; });
  const final = await stream.finalChatCompletion();
  assert.equal(sawMarkup, false);
  const a = whole.choices[0].message.tool_calls;
  const b = final.choices[0].message.tool_calls;
  assert.equal(a.length, 1);
  assert.equal(b.length, 1);
  assert.equal(b[0].function.name, 'get_weather');
  assert.equal(b[0].function.arguments, a[0].function.arguments);
  assert.equal(final.choices[0].finish_reason, 'tool_calls');
  checkCall(b[0]);
});

test('response_format json_schema through parse()', async () => {
  const schema = { type: 'object', properties: { name: { type: 'string' },
    age: { type: 'integer' }, mood: { type: 'string', enum: ['happy', 'sad'] } },
    required: ['name', 'age', 'mood'], additionalProperties: false };
  for (let seed = 1; seed <= 3; seed++) {
    const r = await client.chat.completions.parse({
      model: 'tiny', messages: [{ role: 'user', content: 'A person as JSON' }],
      response_format: { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } },
      temperature: 1, top_p: 1, seed, max_tokens: 120,
    });
    const p = r.choices[0].message.parsed;
    assert.equal(typeof p.name, 'string');
    assert.ok(Number.isInteger(p.age));
    assert.ok(['happy', 'sad'].includes(p.mood));
    assert.deepEqual(Object.keys(p).sort(), ['age', 'mood', 'name']);
  }
});

test('streamed json_object output parses', async () => {
  const stream = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'JSON' }], stream: true,
    response_format: { type: 'json_object' }, temperature: 1, top_p: 1, seed: 9, max_tokens: 80,
  });
  let text = '';
  for await (const chunk of stream) {
    for (const c of chunk.choices) text += c.delta.content || '';
  }
  const v = JSON.parse(text);
  assert.equal(typeof v, 'object');
  assert.ok(v !== null && !Array.isArray(v));
});

test('an unsupported schema keyword is a BadRequestError naming it', async () => {
  await assert.rejects(
    client.chat.completions.create({
      model: 'tiny', messages: [{ role: 'user', content: 'x' }],
      response_format: { type: 'json_schema', json_schema: { name: 'z',
        schema: { type: 'string', format: 'email' } } },
    }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'response_format'
           && /"format"/.test(e.message),
  );
});

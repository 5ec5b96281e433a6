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
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const build = resolve(root, process.env.LLM_BUILD_DIR || 'build');
const moduleSo = join(build, 'nginx', 'objs', 'ngx_http_llm_module.so');
const nginxBin = process.env.TEST_NGINX_BINARY || 'nginx';
const modelDir = resolve(root, process.env.TEST_NGINX_MODEL_DIR || 't/fixtures/tiny-qwen3');

let prefix;
let port;
let client;

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.unref();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port: p } = s.address();
      s.close(() => ok(p));
    });
  });
}

async function waitReady(limitMs) {
  const deadline = Date.now() + limitMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.status === 200) return;
      last = `status ${r.status}`;
    } catch (e) {
      last = String(e);
    }
    await new Promise((ok) => setTimeout(ok, 100));
  }
  const log = existsSync(join(prefix, 'logs', 'error.log'))
    ? readFileSync(join(prefix, 'logs', 'error.log'), 'utf8').slice(-2000) : '';
  throw new Error(`nginx did not become ready (${last})\n${log}`);
}

before(async () => {
  assert.ok(existsSync(moduleSo), `${moduleSo} is missing: run make module`);
  prefix = mkdtempSync(join(tmpdir(), 'ngx-llm-e2e-'));
  mkdirSync(join(prefix, 'logs'));
  port = await freePort();
  const conf = `
load_module ${moduleSo};
worker_processes 1;
daemon on;
master_process on;
pid ${prefix}/logs/nginx.pid;
error_log ${prefix}/logs/error.log info;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path ${prefix}/body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;
    llm_model tiny ${modelDir} threads=1 kv_cache=64m;
    server {
        listen 127.0.0.1:${port};
        location / { llm_pass tiny; }
    }
}
`;
  writeFileSync(join(prefix, 'nginx.conf'), conf);
  const r = spawnSync(nginxBin, ['-p', prefix, '-c', join(prefix, 'nginx.conf'),
                                 '-e', join(prefix, 'logs', 'error.log')],
                      { encoding: 'utf8' });
  assert.equal(r.status, 0, `nginx failed to start: ${r.stderr}`);
  await waitReady(120000);
  client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused',
                        maxRetries: 0, timeout: 60000 });
});

after(() => {
  if (!prefix) return;
  const pidFile = join(prefix, 'logs', 'nginx.pid');
  if (existsSync(pidFile)) {
    spawnSync(nginxBin, ['-p', prefix, '-c', join(prefix, 'nginx.conf'),
                         '-e', join(prefix, 'logs', 'error.log'), '-s', 'quit']);
    // wait for the master to remove its pid file
    const deadline = Date.now() + 10000;
    while (existsSync(pidFile) && Date.now() < deadline) {
      spawnSync('sleep', ['0.1']);
    }
  }
  rmSync(prefix, { recursive: true, force: true });
});

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

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

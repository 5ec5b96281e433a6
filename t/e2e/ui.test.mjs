// The built-in chat page (ui/) against the real server, in headless
// Chromium driven by playwright-core.  First the page's pure modules in node
// (SSE parsing with the body split at every position, message rendering),
// then: start the system nginx with the built module serving the page at /
// (and under /chat/) and the API at /v1/, open the page, send a message
// with a large max_tokens, watch the answer grow, press Stop and watch
// /metrics' running-request count return to 0; regenerate, Esc, an API
// error, tool calls, a phone-sized window.  Screenshots go to
// $LLM_BUILD_DIR/test-output/.
//
//   node --test t/e2e/ui.test.mjs
// Environment: LLM_BUILD_DIR (default build), TEST_NGINX_BINARY (nginx),
// TEST_NGINX_MODEL_DIR (default t/fixtures/tiny-qwen3), CHROMIUM (default
// /usr/bin/chromium; the browser part is skipped when it is absent).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createSseParser } from '../../ui/sse.js';
import { parseMessage, splitInlineCode } from '../../ui/render.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const build = resolve(root, process.env.LLM_BUILD_DIR || 'build');
const moduleSo = join(build, 'nginx', 'objs', 'ngx_http_llm_module.so');
const nginxBin = process.env.TEST_NGINX_BINARY || 'nginx';
const modelDir = resolve(root, process.env.TEST_NGINX_MODEL_DIR || 't/fixtures/tiny-qwen3');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const outDir = join(build, 'test-output');
const uiDir = join(root, 'ui');

// ---- the page's modules in node ---------------------------------------------

// A stream with everything the parser must survive: CRLF and bare CR line
// ends, comments, a multi-line data field, "data:" without a space, an
// unknown field, a non-ASCII character, and a final event without its blank
// line (which must not be dispatched).
const SSE_STREAM =
  ': keepalive\n\n' +
  'data: {"a":"h\u00e9llo \u4f60\u597d \ud83d\ude00"}\r\n\r\n' +
  'event: ping\rdata:1\rdata: 2\r\r' +
  'id: 7\nretry: 10\nfoo: bar\ndata: three\n\n' +
  ': keepalive\r\n\r\n' +
  'data: [DONE]\n\n' +
  'data: truncated';
const SSE_EXPECTED = [
  { event: 'message', data: '{"a":"h\u00e9llo \u4f60\u597d \ud83d\ude00"}' },
  { event: 'ping', data: '1\n2' },
  { event: 'message', data: 'three' },
  { event: 'message', data: '[DONE]' },
];

function parseChunks(chunks) {
  const events = [];
  const p = createSseParser((ev) => events.push(ev));
  const decoder = new TextDecoder();
  for (const c of chunks) p.push(decoder.decode(c, { stream: true }));
  p.push(decoder.decode());
  p.end();
  return events;
}

test('SSE parser: whole stream', () => {
  assert.deepEqual(parseChunks([new TextEncoder().encode(SSE_STREAM)]), SSE_EXPECTED);
});

test('SSE parser: split into two chunks at every byte position', () => {
  const bytes = new TextEncoder().encode(SSE_STREAM);
  for (let i = 1; i < bytes.length; i++) {
    assert.deepEqual(parseChunks([bytes.subarray(0, i), bytes.subarray(i)]), SSE_EXPECTED,
                     `split at byte ${i}`);
  }
});

test('SSE parser: one byte at a time', () => {
  const bytes = new TextEncoder().encode(SSE_STREAM);
  const chunks = [];
  for (let i = 0; i < bytes.length; i++) chunks.push(bytes.subarray(i, i + 1));
  assert.deepEqual(parseChunks(chunks), SSE_EXPECTED);
});

test('SSE parser: a CR at the end of a chunk followed by LF is one line end', () => {
  const events = [];
  const p = createSseParser((ev) => events.push(ev.data));
  p.push('data: a\r');
  p.push('\n\r');
  p.push('\ndata: b\r');
  p.end();
  assert.deepEqual(events, ['a']);   // "b" has no blank line: not dispatched
});

test('message rendering: fences, inline code and tool calls', () => {
  const text = 'Intro with `x<y`\n```python\nprint("<b>")\n\n```\nafter\n' +
               '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' +
               '~~~\nunclosed <script>';
  assert.deepEqual(parseMessage(text), [
    { type: 'text', text: 'Intro with `x<y`' },
    { type: 'code', lang: 'python', text: 'print("<b>")\n', closed: true },
    { type: 'text', text: 'after' },
    { type: 'tool_call', text: '{"name": "get_weather", "arguments": {"city": "Paris"}}', closed: true },
    { type: 'code', lang: '', text: 'unclosed <script>', closed: false },
  ]);
  assert.deepEqual(splitInlineCode('a `b` c'),
                   [{ code: false, text: 'a ' }, { code: true, text: 'b' }, { code: false, text: ' c' }]);
  // a fence of backticks is not closed by tildes, nor by a shorter fence
  assert.deepEqual(parseMessage('````\n~~~\n```\n````'),
                   [{ type: 'code', lang: '', text: '~~~\n```', closed: true }]);
  // a tool call on one line, text around it
  assert.deepEqual(parseMessage('x <tool_call>{"name":"f"}</tool_call> y'), [
    { type: 'text', text: 'x ' },
    { type: 'tool_call', text: '{"name":"f"}', closed: true },
    { type: 'text', text: ' y' },
  ]);
});

// ---- the page in a browser against nginx ------------------------------------

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.unref();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

// JSON for failure messages, with long answer texts cut short.
function brief(v) {
  return JSON.stringify(v, (k, x) => (typeof x === 'string' && x.length > 120
    ? `${x.slice(0, 120)}... (${x.length} chars)` : x));
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// Sum of a metric's samples (over its labels) in /metrics' text.
function metricSum(text, name, labelFilter) {
  let sum = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    if (labelFilter && !rest.includes(labelFilter)) continue;
    const v = Number(line.trim().split(/\s+/).pop());
    if (Number.isFinite(v)) {
      sum += v;
      seen = true;
    }
  }
  return seen ? sum : null;
}

const skipBrowser = existsSync(chromiumPath) ? false
  : `${chromiumPath} is absent (Debian: apt-get install chromium; or set CHROMIUM=): browser test skipped`;

describe('chat page in Chromium', { skip: skipBrowser, timeout: 300000 }, () => {
  let prefix;
  let confPath;
  let base;
  let browser;
  let maxModelLen;
  const pageErrors = [];

  function nginx(args) {
    return spawnSync(nginxBin, ['-p', prefix, '-c', confPath, '-e', join(prefix, 'logs', 'error.log'), ...args],
                     { encoding: 'utf8' });
  }

  function errorLog() {
    const f = join(prefix, 'logs', 'error.log');
    return existsSync(f) ? readFileSync(f, 'utf8').slice(-3000) : '';
  }

  async function metrics() {
    const r = await fetch(`${base}/metrics`);
    assert.equal(r.status, 200, 'GET /metrics');
    return r.text();
  }

  async function running() {
    const n = metricSum(await metrics(), 'llm:num_requests_running');
    assert.notEqual(n, null, '/metrics has llm:num_requests_running');
    return n;
  }

  async function waitFor(what, fn, limitMs) {
    const deadline = Date.now() + limitMs;
    let last;
    for (;;) {
      last = await fn();
      if (last.ok) return last;
      if (Date.now() > deadline) assert.fail(`${what}: gave up after ${limitMs} ms (last: ${brief(last)})`);
      await sleep(50);
    }
  }

  async function openPage(path, options = {}) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...options });
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    page.on('pageerror', (e) => pageErrors.push(`${path}: ${e.message}`));
    const res = await page.goto(base + path);
    assert.equal(res.status(), 200, `GET ${path}`);
    await page.waitForSelector('#model option[value="tiny"]', { state: 'attached', timeout: 30000 });
    return page;
  }

  // The last assistant answer as the page shows it.
  function lastAnswer(page) {
    return page.evaluate(() => {
      const all = document.querySelectorAll('.msg.assistant');
      const m = all[all.length - 1];
      if (!m) return null;
      return {
        text: m.querySelector('.content').textContent,
        error: m.querySelector('.error').hidden ? '' : m.querySelector('.error').textContent,
        stats: m.querySelector('.stats').textContent,
        streaming: m.classList.contains('streaming'),
        stopEnabled: !document.getElementById('stop').disabled,
        count: all.length,
      };
    });
  }

  // Sends `text` with the keyboard (Enter) and waits until the answer has
  // grown across `growths` observations while still streaming.  Returns the
  // lengths seen.
  async function sendAndWatch(page, text, growths) {
    await page.fill('#input', text);
    await page.press('#input', 'Enter');
    const lengths = [];
    await waitFor('streamed text growing', async () => {
      const a = await lastAnswer(page);
      assert.ok(a, 'an assistant message appeared');
      assert.equal(a.error, '', 'no error while streaming');
      assert.ok(a.streaming && a.stopEnabled, `the answer ended before growing ${growths} times: ${brief(a)} after lengths ${lengths}`);
      if (a.text.length > 0 && (lengths.length === 0 || a.text.length > lengths[lengths.length - 1])) {
        lengths.push(a.text.length);
      }
      return { ok: lengths.length > growths, lengths };
    }, 60000);
    return lengths;
  }

  before(async () => {
    assert.ok(existsSync(moduleSo), `${moduleSo} is missing: run make module`);
    let chromium;
    try {
      ({ chromium } = await import('playwright-core'));
    } catch (e) {
      assert.fail(`playwright-core is not installed (cd t/e2e && npm install): ${e.message}`);
    }
    mkdirSync(outDir, { recursive: true });
    prefix = mkdtempSync(join(tmpdir(), 'ngx-llm-ui-'));
    mkdirSync(join(prefix, 'logs'));
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    // as conf/ui.conf, with the repository's ui/ as the page root, plus the
    // page under a prefix (/chat/) to check that its API base is relative
    const page = `
            index index.html;
            add_header Cache-Control "no-cache";
            add_header Content-Security-Policy "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'";
            add_header X-Content-Type-Options nosniff;`;
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
    types {
        text/html html;
        text/css css;
        text/javascript js;
    }
    default_type application/octet-stream;
    charset utf-8;
    charset_types text/css text/javascript;
    llm_model tiny ${modelDir} threads=1;
    server {
        listen 127.0.0.1:${port};
        location / {
            root ${uiDir};
            try_files $uri $uri/ =404;${page}
        }
        location /v1/ { llm_pass tiny; }
        location = /health { llm_pass tiny; }
        location = /metrics { llm_pass tiny; }
        location /chat/ {
            alias ${uiDir}/;${page}
        }
        location /chat/v1/ { llm_pass tiny; }
    }
}
`;
    confPath = join(prefix, 'nginx.conf');
    writeFileSync(confPath, conf);
    const r = nginx([]);
    assert.equal(r.status, 0, `nginx failed to start: ${r.stderr}\n${errorLog()}`);
    let last = '';
    const deadline = Date.now() + 120000;
    for (;;) {
      try {
        const h = await fetch(`${base}/health`);
        if (h.status === 200) break;
        last = `status ${h.status}`;
      } catch (e) {
        last = String(e);
      }
      if (Date.now() > deadline) assert.fail(`nginx did not become ready (${last})\n${errorLog()}`);
      await sleep(100);
    }
    const models = await (await fetch(`${base}/v1/models`)).json();
    maxModelLen = models.data[0].max_model_len;
    assert.ok(Number.isInteger(maxModelLen) && maxModelLen > 200, `max_model_len ${maxModelLen}`);
    // The flags keep Chromium from trying to reach the network (no
    // internet here) and from needing a sandbox or a GPU.
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
             '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    if (!prefix) return;
    const pidFile = join(prefix, 'logs', 'nginx.pid');
    if (existsSync(pidFile)) {
      nginx(['-s', 'quit']);
      const deadline = Date.now() + 10000;
      while (existsSync(pidFile) && Date.now() < deadline) await sleep(100);
    }
    rmSync(prefix, { recursive: true, force: true });
  });

  test('streams an answer incrementally; Stop cancels it on the server', async () => {
    const page = await openPage('/');
    assert.equal(await page.isVisible('#tiny-note'), true, 'the tiny-model note is shown');
    assert.match(await page.textContent('#tiny-note'), /tiny/);
    assert.match(await page.textContent('#model-info'), /tiny/);
    assert.equal(await running(), 0, 'nothing runs before the page sends');

    // Long enough never to end by itself while the test watches; EOS
    // ignored so that the random model cannot stop early.
    await page.fill('#max_tokens', String(maxModelLen - 200));
    await page.click('#settings summary');   // "Advanced" is folded
    await page.fill('#extra', '{"ignore_eos": true}');
    const lengths = await sendAndWatch(page, 'Tell me a very long story.', 4);
    for (let i = 1; i < lengths.length; i++) assert.ok(lengths[i] > lengths[i - 1]);
    assert.ok(await running() >= 1, 'the generation runs on the server while the page streams');
    const abortsBefore = metricSum(await metrics(), 'llm:request_success_total', 'finished_reason="abort"') || 0;

    await page.click('#stop');
    const a = (await waitFor('the page to end the answer', async () => {
      const x = await lastAnswer(page);
      return { ok: !x.streaming && !x.stopEnabled, x };
    }, 10000)).x;
    assert.equal(a.error, '', 'stopping is not an error');
    assert.match(a.stats, /stopped/);
    assert.match(a.stats, /TTFT \d+ ms/);
    await waitFor('llm:num_requests_running to return to 0', async () => {
      const n = await running();
      return { ok: n === 0, n };
    }, 15000);
    const aborts = metricSum(await metrics(), 'llm:request_success_total', 'finished_reason="abort"');
    assert.ok(aborts >= abortsBefore + 1, `the request finished as aborted (abort count ${abortsBefore} -> ${aborts})`);
    const after = await lastAnswer(page);
    assert.equal(after.text, a.text, 'nothing is appended after Stop');
    await page.screenshot({ path: join(outDir, 'ui-stopped.png'), fullPage: true });

    // Regenerate replaces the answer; a finished one shows its speed.
    await page.fill('#max_tokens', '16');
    await page.click('.msg.assistant .regenerate');
    const done = (await waitFor('the regenerated answer to finish', async () => {
      const x = await lastAnswer(page);
      return { ok: !x.streaming && x.stats !== '', x };
    }, 30000)).x;
    assert.equal(done.count, 1, 'regenerate replaced the answer');
    assert.equal(done.error, '');
    assert.match(done.stats, /TTFT \d+ ms · [\d.]+ tok\/s · \d+ prompt \+ 16 tokens · finish: length/);
    assert.ok(done.text.length > 0);

    // Esc stops too.
    await page.fill('#max_tokens', String(maxModelLen - 400));
    await sendAndWatch(page, 'And another one.', 2);
    await page.keyboard.press('Escape');
    await waitFor('Esc to end the answer', async () => {
      const x = await lastAnswer(page);
      return { ok: !x.streaming && /stopped/.test(x.stats), x };
    }, 10000);
    await waitFor('llm:num_requests_running to return to 0 after Esc', async () => {
      const n = await running();
      return { ok: n === 0, n };
    }, 15000);
    await page.screenshot({ path: join(outDir, 'ui-chat.png'), fullPage: true });
    await page.context().close();
  });

  test('an API error is shown with its message', async () => {
    const page = await openPage('/');
    await page.fill('#temperature', '5');
    // Shift+Enter is a newline, not a send
    await page.fill('#input', 'Hi');
    await page.press('#input', 'Shift+Enter');
    await page.type('#input', 'there');
    assert.equal(await page.inputValue('#input'), 'Hi\nthere');
    assert.equal(await page.locator('.msg').count(), 0, 'nothing was sent');
    await page.click('#send');
    const a = (await waitFor('the error to show', async () => {
      const x = await lastAnswer(page);
      return { ok: x && x.error !== '', x };
    }, 15000)).x;
    assert.match(a.error, /400/);
    assert.match(a.error, /temperature/);
    assert.equal(a.streaming, false);
    assert.equal(await page.textContent('.msg.user .content'), 'Hi\nthere');
    await page.context().close();
  });

  test('model text is never markup; tool calls and code blocks render', async () => {
    const page = await openPage('/');
    // delta.tool_calls and keepalive comments, from a stand-in response
    await page.route('**/v1/chat/completions', (route) => route.fulfill({
      status: 200,
      headers: { 'Content-Type': 'text/event-stream' },
      body: ': keepalive\n\n' +
        'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n' +
        'data: {"choices":[{"index":0,"delta":{"content":"<img src=x onerror=\\"window.__xss=1\\">\\n```html\\n<script>window.__xss=2</script>\\n```"}}]}\n\n' +
        ': keepalive\n\n' +
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":"}}]}}]}\n\n' +
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]}}]}\n\n' +
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n' +
        'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}\n\n' +
        'data: [DONE]\n\n',
    }));
    await page.fill('#input', 'weather?');
    await page.press('#input', 'Enter');
    await waitFor('the stand-in answer to finish', async () => {
      const x = await lastAnswer(page);
      return { ok: x && !x.streaming && x.stats !== '', x };
    }, 10000);
    const seen = await page.evaluate(() => {
      const m = document.querySelector('.msg.assistant');
      return {
        xss: window.__xss || 0,
        images: m.querySelectorAll('img').length,
        scripts: m.querySelectorAll('script').length,
        text: m.querySelector('.content .text').textContent,
        code: m.querySelector('.code-block code').textContent,
        lang: m.querySelector('.code-lang').textContent,
        toolName: m.querySelector('.tool-calls .tool-call-name').textContent,
        toolArgs: m.querySelector('.tool-calls .tool-call-args').textContent,
        stats: m.querySelector('.stats').textContent,
      };
    });
    assert.deepEqual(seen, {
      xss: 0, images: 0, scripts: 0,
      text: '<img src=x onerror="window.__xss=1">',
      code: '<script>window.__xss=2</script>',
      lang: 'html',
      toolName: 'get_weather',
      toolArgs: '{\n  "city": "Paris"\n}',
      stats: seen.stats,
    });
    assert.match(seen.stats, /5 prompt \+ 9 tokens · finish: tool_calls/);
    await page.screenshot({ path: join(outDir, 'ui-tool-call.png') });
    await page.context().close();
  });

  test('works under a prefix and on a phone-sized screen', async () => {
    const page = await openPage('/chat/', {
      viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2,
    });
    const layout = await page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      clientWidth: document.documentElement.clientWidth,
      settingsShown: getComputedStyle(document.getElementById('settings')).display !== 'none',
    }));
    assert.ok(layout.scrollWidth <= layout.clientWidth, `no horizontal scrolling: ${JSON.stringify(layout)}`);
    assert.equal(layout.settingsShown, false, 'settings are folded away on a phone');
    await page.click('#toggle-settings');
    assert.equal(await page.isVisible('#system'), true, 'the Settings button opens them');
    await page.fill('#max_tokens', '12');
    await page.click('#toggle-settings');
    assert.equal(await page.isVisible('#system'), false, 'and closes them');
    await page.fill('#input', 'Hello from a phone');
    await page.click('#send');
    const a = (await waitFor('the answer under /chat/', async () => {
      const x = await lastAnswer(page);
      return { ok: x && !x.streaming && x.stats !== '', x };
    }, 30000)).x;
    assert.equal(a.error, '');
    assert.ok(a.text.length > 0);
    await page.screenshot({ path: join(outDir, 'ui-phone.png') });
    await page.context().close();
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  });
});

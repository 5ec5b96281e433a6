// The chat page: talks to the OpenAI-compatible API that nginx serves next
// to it.  No framework and no build step; ES modules loaded from the same
// directory, so the page works offline and under any URL prefix.
import { createSseParser } from './sse.js';
import { renderMessage, renderToolCall } from './render.js';

const $ = (id) => document.getElementById(id);

// ---- settings ---------------------------------------------------------------
// Kept in localStorage per page path, so two pages under different prefixes
// (two servers) keep their own.
const STORE_KEY = 'llm-chat:' + location.pathname;
const SETTING_IDS = ['system', 'temperature', 'top_p', 'max_tokens', 'extra', 'tools', 'api-base', 'api-key'];

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORE_KEY) || '{}') || {};
  } catch {
    saved = {};
  }
  for (const id of SETTING_IDS) {
    if (typeof saved[id] === 'string') $(id).value = saved[id];
  }
  if (typeof saved.model === 'string') state.preferredModel = saved.model;
}

function saveSettings() {
  const s = { model: $('model').value };
  for (const id of SETTING_IDS) s[id] = $(id).value;
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(s));
  } catch {
    // storage full or disabled: settings just do not persist
  }
}

// The API base: ?api= wins, then the Settings field, then the page's
// <meta name="llm-api-base">; relative values resolve against the page.
function apiBase() {
  const fromQuery = new URLSearchParams(location.search).get('api');
  const meta = document.querySelector('meta[name="llm-api-base"]');
  let base = fromQuery || $('api-base').value.trim() || (meta && meta.content) || 'v1/';
  if (!base.endsWith('/')) base += '/';
  return new URL(base, document.baseURI);
}

function apiUrl(path) {
  return new URL(path, apiBase()).toString();
}

function headers() {
  const h = { 'Content-Type': 'application/json' };
  const key = $('api-key').value.trim();
  if (key) h.Authorization = 'Bearer ' + key;
  return h;
}

// ---- state ----------------------------------------------------------------
const state = {
  messages: [],          // { role, content, tool_calls?, view?, stats?, error? }
  busy: false,
  controller: null,      // AbortController of the running request
  models: [],
  preferredModel: '',
};

// ---- errors ---------------------------------------------------------------
// An Error carrying what the server said: OpenAI's {"error": {...}} JSON when
// there is one, else the status line and the start of the body.
async function responseError(res) {
  let text = '';
  try {
    text = await res.text();
  } catch {
    // body unreadable: the status alone
  }
  let msg = `HTTP ${res.status} ${res.statusText}`.trim();
  try {
    const j = JSON.parse(text);
    if (j && j.error) return apiError(j.error, res.status);
  } catch {
    if (text) msg += ': ' + text.slice(0, 300);
  }
  return new Error(msg);
}

function apiError(e, status) {
  const parts = [];
  if (status || e.code) parts.push(String(status || e.code));
  if (e.type) parts.push(e.type);
  const err = new Error((parts.length ? '[' + parts.join(' ') + '] ' : '') + (e.message || 'error')
                        + (e.param ? ` (param: ${e.param})` : ''));
  err.api = e;
  return err;
}

function showBanner(text) {
  const b = $('banner');
  b.textContent = text || '';
  b.hidden = !text;
}

// ---- models ---------------------------------------------------------------
async function loadModels() {
  const sel = $('model');
  sel.disabled = true;
  try {
    const res = await fetch(apiUrl('models'), { headers: headers() });
    if (!res.ok) throw await responseError(res);
    const body = await res.json();
    state.models = Array.isArray(body.data) ? body.data : [];
    sel.replaceChildren();
    for (const m of state.models) {
      const o = document.createElement('option');
      o.value = m.id;
      o.textContent = m.id;
      sel.append(o);
    }
    if (!state.models.length) {
      const o = document.createElement('option');
      o.value = '';
      o.textContent = 'no models';
      sel.append(o);
    } else if (state.models.some((m) => m.id === state.preferredModel)) {
      sel.value = state.preferredModel;
    }
    sel.disabled = state.models.length === 0;
    showBanner('');
  } catch (e) {
    sel.replaceChildren(new Option('no models', ''));
    showBanner(`Could not list models at ${apiUrl('models')}: ${e.message}`);
  }
  modelChanged();
}

function currentModel() {
  return state.models.find((m) => m.id === $('model').value) || null;
}

// Shows the model id (and where it came from) and, for the tiny
// random-weight test model, a note that its text means nothing.
function modelChanged() {
  const m = currentModel();
  const info = $('model-info');
  info.textContent = m ? `${m.id}${m.max_model_len ? ` · ${m.max_model_len} ctx` : ''}` : '';
  info.title = m && m.root ? m.root : '';
  const tiny = !!m && /tiny/i.test(`${m.id} ${m.root || ''}`);
  $('tiny-note').hidden = !tiny;
  $('tiny-note-model').textContent = m ? m.id : '';
  if (m) state.preferredModel = m.id;
  saveSettings();
}

// ---- the request ------------------------------------------------------------
function numberField(id, body, key, integer) {
  const raw = $(id).value.trim();
  if (raw === '') return;
  const v = Number(raw);
  if (!Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw new Error(`${key}: "${raw}" is not ${integer ? 'an integer' : 'a number'}`);
  }
  body[key] = v;
}

function jsonField(id, what, check) {
  const raw = $(id).value.trim();
  if (raw === '') return undefined;
  let v;
  try {
    v = JSON.parse(raw);
  } catch (e) {
    throw new Error(`${what}: invalid JSON (${e.message})`);
  }
  if (!check(v)) throw new Error(`${what}: wrong type`);
  return v;
}

function requestBody() {
  const msgs = [];
  const system = $('system').value;
  if (system.trim() !== '') msgs.push({ role: 'system', content: system });
  for (const m of state.messages) {
    if (m.error && !m.content && !m.tool_calls) continue;     // failed turn
    const out = { role: m.role, content: m.content };
    if (m.tool_calls && m.tool_calls.length) {
      out.tool_calls = m.tool_calls.map((c) => ({
        id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments },
      }));
      if (!out.content) out.content = null;
    }
    msgs.push(out);
  }
  const body = {
    model: $('model').value || undefined,
    messages: msgs,
    stream: true,
    stream_options: { include_usage: true },
  };
  numberField('temperature', body, 'temperature', false);
  numberField('top_p', body, 'top_p', false);
  numberField('max_tokens', body, 'max_tokens', true);
  const tools = jsonField('tools', 'Tools', Array.isArray);
  if (tools && tools.length) body.tools = tools;
  const extra = jsonField('extra', 'Extra request fields',
                          (v) => v !== null && typeof v === 'object' && !Array.isArray(v));
  if (extra) Object.assign(body, extra);
  return body;
}

// Streams one chat completion into `msg`.  Resolves when the stream ends
// (by [DONE], by the server closing it, or by abort); sets msg.error when
// the server refused or failed.
async function streamInto(msg, body, signal) {
  const t0 = performance.now();
  const stats = { t0, tFirst: 0, tEnd: 0, chunks: 0, usage: null, finish: null };
  msg.stats = stats;
  let done = false;

  function onChunk(obj) {
    if (obj.error) {
      msg.error = apiError(obj.error).message;
      return;
    }
    if (obj.usage) stats.usage = obj.usage;
    for (const c of obj.choices || []) {
      if (c.index !== undefined && c.index !== 0) continue;   // the page asks for n=1
      const d = c.delta || {};
      let got = false;
      if (typeof d.content === 'string' && d.content !== '') {
        msg.content += d.content;
        got = true;
      }
      if (Array.isArray(d.tool_calls)) {
        msg.tool_calls = msg.tool_calls || [];
        for (const tc of d.tool_calls) {
          const i = tc.index ?? msg.tool_calls.length;
          const cur = msg.tool_calls[i] || (msg.tool_calls[i] = { id: '', name: '', arguments: '' });
          if (tc.id) cur.id = tc.id;
          if (tc.function && tc.function.name) cur.name += tc.function.name;
          if (tc.function && typeof tc.function.arguments === 'string') cur.arguments += tc.function.arguments;
        }
        got = true;
      }
      if (got) {
        stats.chunks++;
        if (!stats.tFirst) stats.tFirst = performance.now();
      }
      if (c.finish_reason) stats.finish = c.finish_reason;
    }
    scheduleRender(msg);
  }

  const parser = createSseParser((ev) => {
    if (done) return;
    if (ev.data === '[DONE]') {
      done = true;
      return;
    }
    let obj;
    try {
      obj = JSON.parse(ev.data);
    } catch {
      msg.error = 'unparsable event from the server: ' + ev.data.slice(0, 200);
      return;
    }
    onChunk(obj);
  });

  try {
    const res = await fetch(apiUrl('chat/completions'), {
      method: 'POST', headers: headers(), body: JSON.stringify(body), signal,
    });
    if (!res.ok) throw await responseError(res);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done: eof } = await reader.read();
      if (eof) break;
      parser.push(decoder.decode(value, { stream: true }));
      if (done) {
        // [DONE] is the end even if the connection stays open
        reader.cancel().catch(() => {});
        break;
      }
    }
    parser.push(decoder.decode());
    parser.end();
    if (!done && !msg.error) msg.error = 'the stream ended without [DONE]';
  } catch (e) {
    if (signal.aborted) {
      msg.stopped = true;
    } else {
      msg.error = e.message || String(e);
    }
  }
  stats.tEnd = performance.now();
}

// ---- rendering ---------------------------------------------------------------
const chat = $('chat');
let renderQueued = new Set();
let renderFrame = 0;

// Re-rendering a message on every token would cost one layout per token;
// once per animation frame is as smooth and much cheaper.
function scheduleRender(msg) {
  renderQueued.add(msg);
  if (!renderFrame) {
    renderFrame = requestAnimationFrame(() => {
      renderFrame = 0;
      const stick = nearBottom();
      for (const m of renderQueued) renderBody(m);
      renderQueued = new Set();
      if (stick) scrollToBottom();
    });
  }
}

function nearBottom() {
  const doc = document.scrollingElement || document.documentElement;
  return chat.scrollHeight - chat.scrollTop - chat.clientHeight < 80
      || doc.scrollHeight - doc.scrollTop - doc.clientHeight < 80;
}

function scrollToBottom() {
  chat.scrollTop = chat.scrollHeight;
}

async function copyText(text, button) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // no clipboard API outside secure contexts (plain http on a LAN address)
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.style.position = 'fixed';
    ta.style.opacity = '0';
    document.body.append(ta);
    ta.select();
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    ta.remove();
  }
  if (button) {
    const label = button.textContent;
    button.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => { button.textContent = label; }, 1200);
  }
}

function formatStats(msg) {
  const s = msg.stats;
  if (!s) return '';
  const parts = [];
  if (s.tFirst) parts.push(`TTFT ${Math.round(s.tFirst - s.t0)} ms`);
  const n = s.usage ? s.usage.completion_tokens : 0;
  const end = s.tEnd || performance.now();
  if (n > 1 && s.tFirst && end > s.tFirst) {
    // decode speed: the tokens after the first over the time after it
    parts.push(`${((n - 1) / ((end - s.tFirst) / 1000)).toFixed(1)} tok/s`);
  }
  if (s.usage) parts.push(`${s.usage.prompt_tokens} prompt + ${n} tokens`);
  else if (s.chunks && s.tEnd) parts.push(`${s.chunks} chunks`);
  if (msg.stopped) parts.push('stopped');
  else if (s.finish) parts.push(`finish: ${s.finish}`);
  return parts.join(' · ');
}

function renderBody(msg) {
  const v = msg.view;
  if (!v) return;
  renderMessage(v.content, msg.content, copyText);
  const calls = v.tools;
  calls.replaceChildren();
  for (const c of msg.tool_calls || []) calls.append(renderToolCall(c, copyText));
  v.error.textContent = msg.error || '';
  v.error.hidden = !msg.error;
  v.stats.textContent = formatStats(msg);
  v.root.classList.toggle('streaming', !!msg.streaming);
}

function addMessageView(msg) {
  $('empty').hidden = true;
  const root = document.createElement('article');
  root.className = 'msg ' + msg.role;
  const role = document.createElement('div');
  role.className = 'role';
  role.textContent = msg.role === 'user' ? 'You' : 'Assistant';
  const content = document.createElement('div');
  content.className = 'content';
  const tools = document.createElement('div');
  tools.className = 'tool-calls';
  const error = document.createElement('div');
  error.className = 'error';
  error.setAttribute('role', 'alert');
  error.hidden = true;
  const foot = document.createElement('div');
  foot.className = 'msg-foot';
  const stats = document.createElement('span');
  stats.className = 'stats';
  const actions = document.createElement('span');
  actions.className = 'actions';
  const copy = document.createElement('button');
  copy.type = 'button';
  copy.className = 'small copy-msg';
  copy.textContent = 'Copy';
  copy.addEventListener('click', () => copyText(msg.content, copy));
  actions.append(copy);
  if (msg.role === 'assistant') {
    const regen = document.createElement('button');
    regen.type = 'button';
    regen.className = 'small regenerate';
    regen.textContent = 'Regenerate';
    regen.addEventListener('click', () => regenerate(msg));
    actions.append(regen);
  }
  foot.append(stats, actions);
  root.append(role, content, tools, error, foot);
  chat.append(root);
  msg.view = { root, content, tools, error, stats };
  renderBody(msg);
  return root;
}

function setBusy(busy) {
  state.busy = busy;
  $('send').disabled = busy;
  $('stop').disabled = !busy;
  document.body.classList.toggle('busy', busy);
  for (const b of chat.querySelectorAll('button.regenerate')) b.disabled = busy;
}

// ---- actions ---------------------------------------------------------------
async function runAssistantTurn() {
  let body;
  try {
    body = requestBody();
  } catch (e) {
    showBanner(e.message);
    return;
  }
  showBanner('');
  const msg = { role: 'assistant', content: '', streaming: true };
  state.messages.push(msg);
  addMessageView(msg);
  scrollToBottom();
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  try {
    await streamInto(msg, body, controller.signal);
  } finally {
    msg.streaming = false;
    state.controller = null;
    setBusy(false);
    renderBody(msg);
  }
}

function send() {
  if (state.busy) return;
  const input = $('input');
  const text = input.value;
  if (text.trim() === '') return;
  input.value = '';
  fitComposer();
  const msg = { role: 'user', content: text };
  state.messages.push(msg);
  addMessageView(msg);
  saveSettings();
  runAssistantTurn();
}

// Aborting the fetch closes the connection; the server cancels the
// generation when its client goes away.
function stop() {
  if (state.controller) state.controller.abort();
}

// Drops the answer (and everything after it) and asks again.
function regenerate(msg) {
  if (state.busy) return;
  const i = state.messages.indexOf(msg);
  if (i < 0) return;
  for (const m of state.messages.splice(i)) m.view && m.view.root.remove();
  runAssistantTurn();
}

function newChat() {
  stop();
  for (const m of state.messages) m.view && m.view.root.remove();
  state.messages = [];
  $('empty').hidden = false;
  $('input').focus();
}

function fitComposer() {
  const input = $('input');
  input.style.height = 'auto';
  input.style.height = input.scrollHeight + 2 + 'px';
}

// ---- wiring ----------------------------------------------------------------
function init() {
  loadSettings();
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  $('input').addEventListener('keydown', (e) => {
    // Enter sends; Shift+Enter is a newline; Enter that confirms an IME
    // composition is not a send.
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.busy) {
      e.preventDefault();
      stop();
    }
  });
  $('stop').addEventListener('click', stop);
  $('new-chat').addEventListener('click', newChat);
  $('model').addEventListener('change', modelChanged);
  $('reload-models').addEventListener('click', loadModels);
  for (const id of SETTING_IDS) $(id).addEventListener('change', saveSettings);
  // another server or key: list its models
  $('api-base').addEventListener('change', loadModels);
  $('api-key').addEventListener('change', loadModels);
  // the composer grows with its text (up to its CSS max-height)
  $('input').addEventListener('input', fitComposer);
  $('toggle-settings').addEventListener('click', () => {
    const open = document.body.classList.toggle('settings-open');
    $('toggle-settings').setAttribute('aria-expanded', String(open));
  });
  loadModels();
  $('input').focus();
}

init();

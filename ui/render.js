// Turns a model's answer into page elements.
//
// Model text is untrusted: everything here builds DOM nodes and sets
// textContent, never innerHTML, so "<img onerror=...>" in an answer stays
// text.  Only what chat answers need is recognised: ``` fenced code blocks
// (also an unclosed one while it streams), `inline code`, and Qwen's
// <tool_call>{...}</tool_call> blocks (the server sends them as text; it does
// not parse tool calls).  delta.tool_calls from servers that do parse them
// are rendered by renderToolCall too.

const FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;

// Splits text into segments:
//   { type: 'text', text }
//   { type: 'code', lang, text, closed }     fenced code block
//   { type: 'tool_call', text, closed }      <tool_call> ... </tool_call>
export function parseMessage(text) {
  const segments = [];
  const lines = text.split('\n');
  let textLines = [];
  let block = null;          // open code block or tool call

  function flushText() {
    if (textLines.length) {
      const t = textLines.join('\n');
      if (t !== '') segments.push({ type: 'text', text: t });
      textLines = [];
    }
  }

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (block && block.type === 'code') {
      const close = line.match(/^ {0,3}(`{3,}|~{3,})\s*$/);
      if (close && close[1][0] === block.fence[0] && close[1].length >= block.fence.length) {
        segments.push({ type: 'code', lang: block.lang, text: block.lines.join('\n'), closed: true });
        block = null;
      } else {
        block.lines.push(line);
      }
      continue;
    }
    if (block && block.type === 'tool_call') {
      const end = line.indexOf('</tool_call>');
      if (end >= 0) {
        block.lines.push(line.slice(0, end));
        segments.push({ type: 'tool_call', text: block.lines.join('\n').trim(), closed: true });
        block = null;
        const rest = line.slice(end + '</tool_call>'.length);
        if (rest.trim() !== '') textLines.push(rest);
      } else {
        block.lines.push(line);
      }
      continue;
    }
    const open = line.match(FENCE_OPEN);
    if (open) {
      flushText();
      block = { type: 'code', fence: open[1], lang: open[2], lines: [] };
      continue;
    }
    const tc = line.indexOf('<tool_call>');
    if (tc >= 0) {
      const before = line.slice(0, tc);
      if (before.trim() !== '') textLines.push(before);
      flushText();
      block = { type: 'tool_call', lines: [] };
      // the rest of the line may hold the whole call
      lines[i] = line.slice(tc + '<tool_call>'.length);
      i--;
      continue;
    }
    textLines.push(line);
  }
  if (block && block.type === 'code') {
    segments.push({ type: 'code', lang: block.lang, text: block.lines.join('\n'), closed: false });
  } else if (block) {
    segments.push({ type: 'tool_call', text: block.lines.join('\n').trim(), closed: false });
  }
  flushText();
  return segments;
}

// Splits a text segment on `inline code` spans: [{ code: bool, text }].
export function splitInlineCode(text) {
  const parts = [];
  const re = /`([^`\n]+)`/g;
  let last = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) parts.push({ code: false, text: text.slice(last, m.index) });
    parts.push({ code: true, text: m[1] });
    last = m.index + m[0].length;
  }
  if (last < text.length) parts.push({ code: false, text: text.slice(last) });
  return parts;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function copyButton(getText, onCopy) {
  const b = el('button', 'copy small', 'Copy');
  b.type = 'button';
  b.addEventListener('click', () => onCopy(getText(), b));
  return b;
}

// A tool call as a box: function name and its arguments, pretty-printed
// when they are complete JSON.  `call` is { name, arguments } (arguments a
// string, possibly partial while streaming).
export function renderToolCall(call, onCopy) {
  const box = el('div', 'tool-call');
  const head = el('div', 'tool-call-head');
  head.append(el('span', 'tool-call-label', 'tool call'), el('code', 'tool-call-name', call.name || '?'));
  let args = call.arguments || '';
  try {
    args = JSON.stringify(JSON.parse(args), null, 2);
  } catch {
    // still streaming, or not JSON: show as sent
  }
  if (onCopy) head.append(copyButton(() => args, onCopy));
  box.append(head, el('pre', 'tool-call-args', args));
  return box;
}

// Parses a <tool_call> body ({"name": ..., "arguments": {...}}) into
// { name, arguments } for renderToolCall; unparsable bodies keep the text.
function toolCallFromText(text) {
  try {
    const o = JSON.parse(text);
    if (o && typeof o === 'object' && typeof o.name === 'string') {
      const a = o.arguments;
      return { name: o.name, arguments: typeof a === 'string' ? a : JSON.stringify(a ?? {}) };
    }
  } catch {
    // partial while streaming
  }
  return { name: '', arguments: text };
}

// Replaces the children of `container` with the rendering of `text`.
// onCopy(text, button) is called by the code blocks' copy buttons.
export function renderMessage(container, text, onCopy) {
  const frag = document.createDocumentFragment();
  for (const seg of parseMessage(text)) {
    if (seg.type === 'code') {
      const wrap = el('div', 'code-block' + (seg.closed ? '' : ' open'));
      const head = el('div', 'code-head');
      head.append(el('span', 'code-lang', seg.lang || 'code'));
      if (onCopy) head.append(copyButton(() => seg.text, onCopy));
      const pre = el('pre');
      pre.append(el('code', seg.lang ? 'lang-' + seg.lang.replace(/[^\w+-]/g, '') : '', seg.text));
      wrap.append(head, pre);
      frag.append(wrap);
    } else if (seg.type === 'tool_call') {
      frag.append(renderToolCall(toolCallFromText(seg.text), onCopy));
    } else {
      const p = el('div', 'text');
      for (const part of splitInlineCode(seg.text)) {
        p.append(part.code ? el('code', 'inline', part.text) : document.createTextNode(part.text));
      }
      frag.append(p);
    }
  }
  container.replaceChildren(frag);
}

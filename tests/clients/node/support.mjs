// What the ws client tests share: client configurations, payloads, a message inbox
// with timeouts, and checks.

import assert from "node:assert/strict";
import WebSocket from "ws";

// One message or one step of a test; generous for the debug host deflating 1 MiB.
export const STEP_TIMEOUT_MS = 30_000;
// The whole of one test. Only turns a hang into a failure.
export const TEST_TIMEOUT_MS = 90_000;

/**
 * Client configurations. `perMessageDeflate` is ws's own option; `threshold: 0` makes
 * ws compress every message (by default it sends messages under 1 KiB uncompressed).
 * `serverCompression: false` runs against a host with `--compression false`, which
 * must decline the offer.
 */
export const CONFIGS = [
  { id: "plain", perMessageDeflate: false },
  { id: "deflate", perMessageDeflate: true },
  { id: "deflate-all", perMessageDeflate: { threshold: 0 } },
  {
    id: "deflate-client-no-takeover",
    perMessageDeflate: { threshold: 0, clientNoContextTakeover: true },
  },
  {
    id: "deflate-no-takeover",
    perMessageDeflate: { threshold: 0, clientNoContextTakeover: true, serverNoContextTakeover: true },
  },
  { id: "deflate-declined", perMessageDeflate: true, serverCompression: false },
  // The host serves the plugin as stateless (`--stateless`): on the connections' threads,
  // its replies skipping the outbound queue.
  { id: "plain-stateless", perMessageDeflate: false, stateless: true },
  { id: "deflate-stateless", perMessageDeflate: { threshold: 0 }, stateless: true },
].map((config) => ({ serverCompression: true, stateless: false, ...config }));

// For a host of a test file's own with compression on; whether that host is stateless
// is its own business.
export const COMPRESSING_HOST_CONFIGS = CONFIGS.filter((config) => config.serverCompression && !config.stateless);

function compressed(config) {
  return config.perMessageDeflate !== false && config.serverCompression;
}

/**
 * A `WebSocket` that is open, with every message it receives kept in `inbox`. It is
 * terminated when test `t` ends, so a failed test leaves no connection behind.
 */
export async function connect(t, url, config) {
  const ws = new WebSocket(url, { perMessageDeflate: config.perMessageDeflate });
  t.after(() => ws.terminate());
  const inbox = new Inbox(ws);
  let response;
  ws.once("upgrade", (res) => (response = res));
  await within(STEP_TIMEOUT_MS, "the handshake", new Promise((resolveOpen, reject) => {
    ws.once("open", resolveOpen);
    ws.once("error", reject);
  }));
  checkNegotiated(config, ws, response.headers["sec-websocket-extensions"]);
  return { ws, inbox };
}

/** The host accepted exactly what the configuration offered, or declined it. */
function checkNegotiated(config, ws, header) {
  if (!compressed(config)) {
    assert.equal(header, undefined, "no compression expected");
    assert.equal(ws.extensions, "");
    return;
  }
  assert.equal(ws.extensions, "permessage-deflate");
  const params = header.split(";").map((part) => part.trim().split("=")[0]);
  assert.equal(params[0], "permessage-deflate", header);
  const options = typeof config.perMessageDeflate === "object" ? config.perMessageDeflate : {};
  assert.equal(params.includes("server_no_context_takeover"), Boolean(options.serverNoContextTakeover), header);
  assert.equal(params.includes("client_no_context_takeover"), Boolean(options.clientNoContextTakeover), header);
}

/**
 * Collects messages as ws delivers them, so a test can wait for the next one with a
 * timeout. A close (or an error, which ws follows with a close) fails every wait
 * from then on, saying how many messages had arrived.
 */
export class Inbox {
  constructor(ws) {
    this.messages = [];
    this.received = 0;
    this.waiter = null;
    this.ended = null;
    this.error = null;
    ws.on("message", (data, isBinary) => {
      this.received += 1;
      this.messages.push({ data, isBinary });
      this.#wake();
    });
    ws.on("error", (error) => (this.error = error));
    ws.on("close", (code, reason) => {
      this.ended = new Error(
        `connection closed after ${this.received} messages: code ${code}` +
          (reason.length ? ` reason "${reason}"` : "") +
          (this.error ? `; client error: ${this.error.message}` : ""),
      );
      this.#wake();
    });
  }

  #wake() {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }

  /** The next message, `{ data: Buffer, isBinary }`. */
  async next(what = "message") {
    while (this.messages.length === 0) {
      if (this.ended) throw new Error(`waiting for ${what}: ${this.ended.message}`);
      await within(STEP_TIMEOUT_MS, what, new Promise((wake) => (this.waiter = wake)));
    }
    return this.messages.shift();
  }
}

/** Rejects with a clear message if `promise` has not settled within `ms`. */
export async function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const hex = (bytes, from) => (from < bytes.length ? `0x${bytes.subarray(from, from + 16).toString("hex")}` : "nothing more");

/** `received` is `sent` (a string for text, a Buffer for binary), byte for byte. */
export function assertSame(received, sent, what = "message") {
  const binary = Buffer.isBuffer(sent);
  assert.equal(received.isBinary, binary, `${what}: sent ${binary ? "binary" : "text"}, got the other`);
  const expected = binary ? sent : Buffer.from(sent, "utf8");
  if (received.data.equals(expected)) return;
  // Say where, rather than printing a megabyte-long diff.
  const a = received.data;
  let first = 0;
  while (first < Math.min(a.length, expected.length) && a[first] === expected[first]) first += 1;
  assert.fail(
    `${what}: sent ${expected.length} bytes, received ${a.length}; first difference at byte ${first}: ` +
      `sent ${hex(expected, first)}, received ${hex(a, first)}`,
  );
}

/** Sends one message: strings as text, Buffers as binary. Resolves once ws has written it. */
export function send(ws, message) {
  return new Promise((resolveSent, reject) => {
    ws.send(message, { binary: Buffer.isBuffer(message) }, (error) => (error ? reject(error) : resolveSent()));
  });
}

/** Closes with 1000 and checks that the host answered the close with 1000. */
export async function closeCleanly(ws) {
  assert.equal(ws.readyState, WebSocket.OPEN, "connection still open before closing");
  const closed = new Promise((resolveClose) => ws.once("close", (code) => resolveClose(code)));
  ws.close(1000);
  assert.equal(await within(STEP_TIMEOUT_MS, "closing handshake", closed), 1000, "host's close code");
}

// Characters of 1, 2, 3 and 4 bytes in UTF-8, so that text crosses every kind of
// character boundary, also at frame and inflate buffer edges.
const TEXT_ALPHABET = [..."abcxyz019 ~éßЖ€中✓😀𝄞"];

/** A small seeded PRNG (mulberry32): the same payloads on every run. */
function random(seedText) {
  let seed = 0;
  for (const char of seedText) seed = (Math.imul(seed, 31) + char.codePointAt(0)) | 0;
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A random string whose UTF-8 encoding is exactly `size` bytes. */
export function textOfSize(size, seed) {
  const next = random(seed);
  const chars = [];
  let used = 0;
  while (used < size) {
    let char = TEXT_ALPHABET[Math.floor(next() * TEXT_ALPHABET.length)];
    let width = Buffer.byteLength(char);
    if (used + width > size) [char, width] = ["a", 1];
    chars.push(char);
    used += width;
  }
  const text = chars.join("");
  assert.equal(Buffer.byteLength(text), size);
  return text;
}

/** Random (incompressible) bytes. */
export function bytesOfSize(size, seed) {
  const next = random(seed);
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 1) bytes[i] = Math.floor(next() * 256);
  return bytes;
}

export function payload(kind, size, seed) {
  return kind === "text" ? textOfSize(size, seed) : bytesOfSize(size, seed);
}

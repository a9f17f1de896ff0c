// The chat room of plugins/chat, in JavaScript: names given at the handshake
// (`?name=NAME`, refused with 400 or 409 before the upgrade), every text message
// relayed to every other connection as JSON with the sender's name and colour, joins,
// leaves and renames announced, the last 50 messages kept in the key-value store and
// sent to newcomers, and the list of who is here sent to everyone every 3 seconds.
// Binary messages are relayed unchanged. The protocol is documented at the top of
// plugins/chat/src/lib.rs.
//
// The room lives in the host, not in this module's memory: each name is its
// connection's attachment, the history is in the store under `history/<sequence
// number>` and the presence timer is the host's. `snapshot`/`restore` carry nothing,
// so that a hot reload does not replay on-open (no second welcome).
//
// Built by componentize-js against wit/ (world plugin-handshake-state; see the
// Makefile's `plugins-js`). WIT u64 values (connection ids) are BigInts here; JSON
// gets plain numbers. A WIT result's error is thrown; an option is a value or
// undefined; list<u8> is a Uint8Array.

import {
  sendText,
  close,
  broadcastText,
  broadcastBinary,
  connections,
  attachment,
  setAttachment,
  log,
} from "wsplug:plugin/host@0.2.0";
import * as store from "wsplug:plugin/store@0.2.0";
import { setTimer, cancelTimer, timerPending } from "wsplug:plugin/timers@0.2.0";

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324", "#800000"];
const MAX_NAME = 24;
/** Messages kept for newcomers. */
const HISTORY = 50;
const HISTORY_PREFIX = "history/";
/** Longest `message` (its JSON, in bytes) kept in the history; longer ones are only relayed. */
const MAX_KEPT = 4096;
/** The presence timer, and its period. */
const PRESENCE = 1n;
const PRESENCE_MS = 3000;
/** How long a name admitted at a handshake stays reserved for its on-open, in ms. */
const RESERVATION_MS = 10_000;

const encoder = new TextEncoder();
const lossy = new TextDecoder("utf-8");
const strict = new TextDecoder("utf-8", { fatal: true });

/**
 * Names let in by onUpgrade whose onOpen has not come yet, with when: two handshakes
 * with one name, close together, must not both get in.
 */
let admitted = [];

/**
 * Keeps ASCII letters and digits, `-`, `_`, `.` and cased non-ASCII letters, at most
 * MAX_NAME of them; null if none. (This SpiderMonkey build has no Unicode property
 * escapes, so letters without case, such as CJK, are dropped here.)
 */
function cleanName(raw) {
  const kept = Array.from(raw).filter(
    (c) => /[A-Za-z0-9\-_.]/.test(c) || (c > "\x7f" && c.toLowerCase() !== c.toUpperCase()),
  );
  const name = kept.slice(0, MAX_NAME).join("");
  return name === "" ? null : name;
}

const hexDigit = (byte) =>
  byte >= 0x30 && byte <= 0x39 ? byte - 0x30
  : byte >= 0x41 && byte <= 0x46 ? byte - 0x37
  : byte >= 0x61 && byte <= 0x66 ? byte - 0x57
  : -1;

/** Decodes `%XX` escapes and `+`; invalid escapes stay as they are, invalid UTF-8 is replaced. */
function percentDecode(text) {
  const bytes = encoder.encode(text);
  const out = [];
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] === 0x25 && i + 2 < bytes.length) {
      const hi = hexDigit(bytes[i + 1]);
      const lo = hexDigit(bytes[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push(hi * 16 + lo);
        i += 2;
        continue;
      }
    }
    out.push(bytes[i] === 0x2b ? 0x20 : bytes[i]);
  }
  return lossy.decode(new Uint8Array(out));
}

/** The value of query parameter `name`, percent-decoded (`+` is a space), if present. */
function queryParam(query, name) {
  if (query === undefined) return undefined;
  for (const pair of query.split("&")) {
    const eq = pair.indexOf("=");
    const [key, value] = eq < 0 ? [pair, ""] : [pair.slice(0, eq), pair.slice(eq + 1)];
    if (key === name) return percentDecode(value);
  }
  return undefined;
}

/** The user a connection is, from its attachment; null without a (UTF-8) one. */
function user(conn, data) {
  if (data === undefined) return null;
  let name;
  try {
    name = strict.decode(data);
  } catch {
    return null;
  }
  return { id: conn, name, color: COLORS[Number(conn % BigInt(COLORS.length))] };
}

/** Everyone in the room, by id. */
function users() {
  const conns = Array.from(connections()).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return conns.map((c) => user(c, attachment(c))).filter((u) => u !== null);
}

function nameTaken(name) {
  const now = performance.now();
  admitted = admitted.filter(([, at]) => now - at < RESERVATION_MS);
  return admitted.some(([n]) => n === name) || users().some((u) => u.name === name);
}

const publicUser = (u) => ({ id: Number(u.id), name: u.name, color: u.color });

const json = (type, u, extra = {}) => JSON.stringify({ type, ...publicUser(u), ...extra });

/** A store error as the Rust plugin logs it (its Debug form). */
function describe(error) {
  const e = error?.payload ?? error;
  if (e?.tag === "too-large") return "StoreError::TooLarge";
  if (e?.tag === "unavailable") return `StoreError::Unavailable(${JSON.stringify(e.val)})`;
  return String(e);
}

/**
 * The number the next history message gets, once this instance has read the keys
 * (`undefined` until then, and again after a write failed: the store may have lost it).
 */
let nextInHistory;

const historyKey = (n) => HISTORY_PREFIX + String(n).padStart(20, "0");

/**
 * Appends a `message` to the history, dropping the oldest beyond HISTORY. The first call
 * of an instance reads the history's keys; later ones know the next number and the
 * oldest to drop.
 */
function remember(message) {
  const bytes = encoder.encode(message);
  if (bytes.length > MAX_KEPT) return;
  if (nextInHistory === undefined) {
    let keys = [];
    try {
      keys = store.listKeys(HISTORY_PREFIX, undefined, 1000);
    } catch {}
    for (const old of keys.slice(0, Math.max(0, keys.length + 1 - HISTORY))) {
      try {
        store.delete(old);
      } catch {}
    }
    nextInHistory = 1n;
    const last = keys.at(-1)?.slice(HISTORY_PREFIX.length);
    if (last !== undefined && /^\+?[0-9]+$/.test(last) && BigInt(last) < 1n << 64n) nextInHistory = BigInt(last) + 1n;
  }
  const next = nextInHistory;
  try {
    store.set(historyKey(next), bytes, undefined);
  } catch (error) {
    log("warn", `history not stored: ${describe(error)}`);
    nextInHistory = undefined;
    return;
  }
  if (next > BigInt(HISTORY)) {
    try {
      store.delete(historyKey(next - BigInt(HISTORY)));
    } catch {}
  }
  nextInHistory = next + 1n;
}

/** The kept messages, oldest first. */
function history() {
  let keys = [];
  try {
    keys = store.listKeys(HISTORY_PREFIX, undefined, 1000);
  } catch {}
  const kept = [];
  for (const key of keys) {
    try {
      const value = store.get(key);
      if (value !== undefined) kept.push(JSON.parse(strict.decode(value)));
    } catch {}
  }
  return kept;
}

function reject(status, body) {
  return {
    tag: "reject",
    val: {
      status,
      headers: [["content-type", "text/plain; charset=utf-8"]],
      body: encoder.encode(body),
    },
  };
}

export const handshake = {
  onUpgrade(request) {
    const raw = queryParam(request.query, "name");
    const name = raw === undefined ? null : cleanName(raw);
    if (name === null) return reject(400, "a name is required: connect with ?name=NAME\n");
    if (nameTaken(name)) return reject(409, `the name ${name} is taken\n`);
    admitted.push([name, performance.now()]);
    return {
      tag: "accept",
      val: { subprotocol: undefined, attachment: encoder.encode(name), groups: [] },
    };
  },
};

export function onOpen(conn) {
  const me = user(conn, attachment(conn));
  if (me === null) {
    // Let in before this version decided handshakes: no name to go by.
    try {
      close(conn, 4000, "a name is required: reconnect with ?name=NAME");
    } catch {}
    return;
  }
  admitted = admitted.filter(([name]) => name !== me.name);
  const others = users().filter((u) => u.id !== conn).map(publicUser);
  try {
    sendText(conn, json("welcome", me, { users: others, history: history() }));
  } catch {}
  broadcastText(json("join", me), conn);
  if (!timerPending(PRESENCE)) {
    try {
      setTimer(PRESENCE, PRESENCE_MS, PRESENCE_MS);
    } catch {}
  }
}

export function onText(conn, text) {
  const me = user(conn, attachment(conn));
  if (me === null) return;
  if (text.startsWith("/name ")) {
    const name = cleanName(text.slice("/name ".length));
    let refusal;
    if (name === null) {
      refusal = "a name needs a letter or a digit";
    } else if (name !== me.name && nameTaken(name)) {
      refusal = "that name is taken";
    } else {
      try {
        setAttachment(conn, encoder.encode(name));
      } catch {}
      broadcastText(json("rename", { ...me, name }, { old: me.name }), undefined);
      return;
    }
    try {
      sendText(conn, JSON.stringify({ type: "error", text: refusal }));
    } catch {}
    return;
  }
  const message = json("message", me, { text });
  broadcastText(message, conn);
  remember(message);
}

export function onBinary(conn, data) {
  broadcastBinary(data, conn);
}

export function onClose(conn, _code, _reason) {
  // The attachment is still readable during on-close.
  const me = user(conn, attachment(conn));
  if (me !== null) broadcastText(json("leave", me), conn);
}

export function onTimer(id) {
  if (id !== PRESENCE) return;
  const everyone = users();
  if (everyone.length === 0) {
    cancelTimer(PRESENCE);
    return;
  }
  broadcastText(JSON.stringify({ type: "presence", users: everyone.map(publicUser) }), undefined);
}

// The room is in the host: nothing to carry, but having these exports means a reload
// takes over without replaying on-open (and a second welcome).
export const state = {
  snapshot() {
    return new Uint8Array(0);
  },
  restore(_state) {},
};

// The chat room of plugins/chat, in JavaScript: every text message is relayed to
// every other connection as JSON with the sender's name and colour; joins, leaves and
// renames are announced; binary messages are relayed unchanged. The protocol is
// documented at the top of plugins/chat/src/lib.rs.
//
// Built by componentize-js against wit/ (see the Makefile's `plugins-js`).
// WIT u64 values (connection ids) are BigInts here; JSON gets plain numbers.

import { sendText, broadcastText, broadcastBinary, info } from "wsplug:plugin/host@0.1.0";

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324", "#800000"];
const MAX_NAME = 24;

/** Everyone in the room: connection id (BigInt) -> {id, name, color}. */
const users = new Map();

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

function nameFromQuery(conn) {
  const query = info(conn)?.query;
  if (!query) return null;
  const pair = query.split("&").find((p) => p.startsWith("name="));
  return pair === undefined ? null : cleanName(pair.slice("name=".length));
}

const json = (type, user, extra = {}) =>
  JSON.stringify({ type, id: Number(user.id), name: user.name, color: user.color, ...extra });

const publicUser = (u) => ({ id: Number(u.id), name: u.name, color: u.color });

export function onOpen(conn) {
  const user = {
    id: conn,
    name: nameFromQuery(conn) ?? `guest-${conn}`,
    color: COLORS[Number(conn % BigInt(COLORS.length))],
  };
  const others = [...users.values()].map(publicUser);
  users.set(conn, user);
  try {
    sendText(conn, json("welcome", user, { users: others }));
  } catch {
    return; // already gone: it gets its on-close next
  }
  broadcastText(json("join", user), conn);
}

export function onText(conn, text) {
  const user = users.get(conn);
  if (user === undefined) return;
  if (text.startsWith("/name ")) {
    const name = cleanName(text.slice("/name ".length));
    if (name === null) return;
    const old = user.name;
    user.name = name;
    broadcastText(json("rename", user, { old }), undefined);
    return;
  }
  broadcastText(json("message", user, { text }), conn);
}

export function onBinary(conn, data) {
  broadcastBinary(data, conn);
}

export function onClose(conn, _code, _reason) {
  const user = users.get(conn);
  if (user === undefined) return;
  users.delete(conn);
  broadcastText(json("leave", user), conn);
}

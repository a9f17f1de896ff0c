// A test plugin (tests/runtime.rs): "print TEXT" writes TEXT to stdout
// (console.log) and to stderr (console.error), then answers "ok"; any other text
// is echoed. Shows that a JavaScript plugin's output reaches the host's log.
import { sendText } from "wsplug:plugin/host@0.1.0";

export function onOpen(conn) {}

export function onText(conn, text) {
  let answer = text;
  if (text.startsWith("print ")) {
    const line = text.slice("print ".length);
    console.log(line);
    console.error(line);
    answer = "ok";
  }
  try { sendText(conn, answer); } catch {}
}

export function onBinary(conn, data) {}

export function onClose(conn, code, reason) {}

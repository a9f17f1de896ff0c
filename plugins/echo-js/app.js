// Echoes text as text and binary as binary to the connection that sent it.
import { sendText, sendBinary } from "wsplug:plugin/host@0.1.0";

export function onOpen(conn) {}

// A result<_, error> import throws when it returns an error; the only one possible
// here is that the connection is gone, so there is nothing to do.
export function onText(conn, text) {
  try { sendText(conn, text); } catch {}
}

export function onBinary(conn, data) {
  try { sendBinary(conn, data); } catch {}
}

export function onClose(conn, code, reason) {}

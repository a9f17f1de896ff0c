// A chat-like fan-out through broadcast.wasm with Node's ws: one client sends a burst
// of 150, idle clients that read everything must get all 150, in order, and stay
// connected.

import { after, before, test } from "node:test";
import { startHost } from "./host.mjs";
import {
  COMPRESSING_HOST_CONFIGS, TEST_TIMEOUT_MS, assertSame, closeCleanly, connect, payload, send,
} from "./support.mjs";

const COUNT = 150;

let host;
before(async () => {
  host = await startHost("broadcast.wasm");
});
after(async () => {
  await host?.stop();
});

/**
 * `senderConfig` sends, one reader per entry of `readerConfigs` listens. Text and
 * binary alternate in the burst, chat-sized (20 to 119 bytes).
 */
async function burstToIdleReaders(t, senderConfig, readerConfigs, seed) {
  const sender = await connect(t, host.url, senderConfig);
  const readers = [];
  for (const config of readerConfigs) readers.push(await connect(t, host.url, config));

  // Broadcasts reach the connections the plugin has seen open. The host queues a
  // connection's on-open right as it answers the handshake, and the plugin handles
  // each connection's events in order, so the sender getting a reader's "ready"
  // shows that the reader is in the room. One at a time, so that every reader gets
  // the other readers' "ready" in a known order.
  for (const [index, reader] of readers.entries()) {
    await send(reader.ws, `ready ${index}`);
    assertSame(await sender.inbox.next(`ready ${index}`), `ready ${index}`);
  }
  for (const [index, reader] of readers.entries()) {
    for (const other of readers.keys()) {
      if (other !== index) assertSame(await reader.inbox.next(`ready ${other}`), `ready ${other}`, `reader ${index}`);
    }
  }

  const messages = Array.from({ length: COUNT }, (_, i) =>
    payload(i % 2 ? "binary" : "text", 20 + (i % 100), `${seed}-${i}`));
  messages.push("end of the burst");
  const written = Promise.all(messages.map((message) => send(sender.ws, message)));
  written.catch(() => {}); // a reader's failure is the one to report
  await Promise.all(readers.map(async ({ inbox }, index) => {
    for (const [i, message] of messages.entries()) {
      assertSame(await inbox.next(`broadcast ${i} at reader ${index}`), message, `broadcast ${i} at reader ${index}`);
    }
  }));
  await written;
  // Every reader still connected: each completes a closing handshake with the host.
  await Promise.all(readers.map(({ ws }) => closeCleanly(ws)));
  await closeCleanly(sender.ws);
}

const options = { timeout: TEST_TIMEOUT_MS };

for (const config of COMPRESSING_HOST_CONFIGS) {
  test(`${config.id}: an idle reader gets all ${COUNT} of a burst`, options, (t) =>
    burstToIdleReaders(t, config, [config], config.id));
}

test(`three idle readers, each configured differently, get all ${COUNT} of a burst`, options, (t) => {
  const byId = Object.fromEntries(COMPRESSING_HOST_CONFIGS.map((config) => [config.id, config]));
  return burstToIdleReaders(t, byId["deflate"], [byId["plain"], byId["deflate-all"], byId["deflate-no-takeover"]], "three");
});

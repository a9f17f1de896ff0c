// 1000 small messages to echo.wasm through Node's ws, every echo checked in order,
// and the connection still usable afterwards (one more round trip, then a clean 1000
// close). Two ways of sending:
// - written before reading: 1000 `ws.send` calls in one synchronous loop, so no echo
//   can be handled before the last message is queued;
// - read while sending: each send awaits its write callback, which lets the event
//   loop deliver the echoes that have come in meanwhile, as ws applications do.

import { describe, test } from "node:test";
import { echoHosts } from "./host.mjs";
import { CONFIGS, TEST_TIMEOUT_MS, assertSame, closeCleanly, connect, payload, send } from "./support.mjs";

const COUNT = 1000;
const KINDS = ["text", "binary"];

const urlFor = echoHosts();

// 5 to 64 bytes, random content: an echo out of order or a lost one cannot go unnoticed.
const burst = (kind, seed) => Array.from({ length: COUNT }, (_, i) => payload(kind, 5 + (i % 60), `${seed}-${kind}-${i}`));

async function expectEchoes(inbox, messages) {
  for (const [index, message] of messages.entries()) {
    assertSame(await inbox.next(`echo ${index} of ${messages.length}`), message, `echo ${index}`);
  }
}

/** The connection survived: one more echo, then the closing handshake. */
async function stillOpen(ws, inbox) {
  await send(ws, "after the burst");
  assertSame(await inbox.next("the echo after the burst"), "after the burst");
  await closeCleanly(ws);
}

async function writtenBeforeReading(t, config, kind, seed) {
  const messages = burst(kind, seed);
  const { ws, inbox } = await connect(t, urlFor(config), config);
  // `send` calls ws.send synchronously: this is one loop of 1000 ws.send calls.
  const written = Promise.all(messages.map((message) => send(ws, message)));
  // A dropped connection fails both; the echoes say how far it got, so report theirs
  // (and keep this rejection from counting as unhandled meanwhile).
  written.catch(() => {});
  await expectEchoes(inbox, messages);
  await written;
  await stillOpen(ws, inbox);
}

async function readWhileSending(t, config, kind, seed) {
  const messages = burst(kind, seed);
  const { ws, inbox } = await connect(t, urlFor(config), config);
  const sending = (async () => {
    for (const message of messages) await send(ws, message);
  })();
  // A dropped connection fails both; the echoes say how far it got, so report theirs.
  sending.catch(() => {});
  await expectEchoes(inbox, messages);
  await sending;
  await stillOpen(ws, inbox);
}

const options = { timeout: TEST_TIMEOUT_MS };

for (const config of CONFIGS) {
  describe(config.id, () => {
    for (const kind of KINDS) {
      test(`${COUNT} ${kind} messages written before reading`, options, (t) =>
        writtenBeforeReading(t, config, kind, "before"));
      test(`${COUNT} ${kind} messages read while sending`, options, (t) =>
        readWhileSending(t, config, kind, "while"));
    }
  });
}

describe("four connections at once", () => {
  const ids = ["plain", "deflate", "deflate-client-no-takeover", "deflate-no-takeover"];
  const configs = CONFIGS.filter((config) => ids.includes(config.id));
  test(`${COUNT} messages each, written before reading`, options, (t) =>
    Promise.all(configs.map((config, i) => writtenBeforeReading(t, config, KINDS[i % 2], `four-before-${i}`))));
  test(`${COUNT} messages each, read while sending`, options, (t) =>
    Promise.all(configs.map((config, i) => readWhileSending(t, config, KINDS[i % 2], `four-while-${i}`))));
});

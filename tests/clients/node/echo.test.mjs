// echo.wasm through Node's ws: negotiation, every frame-length boundary, empty
// messages, and a few connections at once. Each case runs once per client
// configuration (support.mjs CONFIGS).

import { describe, test } from "node:test";
import { echoHosts } from "./host.mjs";
import {
  CONFIGS, TEST_TIMEOUT_MS, assertSame, closeCleanly, connect, payload, send,
} from "./support.mjs";

// 125/126 and 65535/65536 are where the frame header switches from a 7-bit length to
// a 16-bit one and from 16-bit to 64-bit; 1 MiB spans many inflate/deflate buffers.
const SIZES = [0, 1, 125, 126, 65535, 65536, 1024 * 1024];
const KINDS = ["text", "binary"];

const urlFor = echoHosts();

/** Sends each message and waits for its echo before the next. */
async function echoEach(ws, inbox, messages, label) {
  for (const [index, message] of messages.entries()) {
    await send(ws, message);
    assertSame(await inbox.next(`echo ${index} of ${label}`), message, `echo ${index} of ${label}`);
  }
}

const options = { timeout: TEST_TIMEOUT_MS };

for (const config of CONFIGS) {
  describe(config.id, () => {
    test("handshake negotiates what was offered", options, async (t) => {
      const { ws, inbox } = await connect(t, urlFor(config), config);
      await echoEach(ws, inbox, ["ping"], "ping");
      await closeCleanly(ws);
    });

    for (const kind of KINDS) {
      for (const size of SIZES) {
        test(`${kind} of ${size} bytes echoes byte for byte`, options, async (t) => {
          const message = payload(kind, size, `${kind}-${size}`);
          const { ws, inbox } = await connect(t, urlFor(config), config);
          await echoEach(ws, inbox, [message], `${size} bytes of ${kind}`);
          await closeCleanly(ws);
        });
      }
    }

    if (config.serverCompression) {
      // With context takeover each message is compressed against the ones before it.
      test("every size on one connection, text and binary alternating", options, async (t) => {
        const messages = SIZES.flatMap((size) => KINDS.map((kind) => payload(kind, size, `${kind}-${size}`)));
        const { ws, inbox } = await connect(t, urlFor(config), config);
        await echoEach(ws, inbox, messages, "every size");
        await closeCleanly(ws);
      });
    }

    const emptySequences = {
      text: ["hello", "", "world"],
      binary: [Buffer.from("hello"), Buffer.alloc(0), Buffer.from("world")],
      "text, several empty": ["", "hello", "", "", "world", ""],
      "binary, several empty": [Buffer.alloc(0), Buffer.from("hello"), Buffer.alloc(0), Buffer.alloc(0), Buffer.from("world"), Buffer.alloc(0)],
      mixed: ["hello", Buffer.alloc(0), "world", "", Buffer.from("bytes"), "end"],
    };
    for (const [name, sequence] of Object.entries(emptySequences)) {
      test(`empty messages between others: ${name}`, options, async (t) => {
        const { ws, inbox } = await connect(t, urlFor(config), config);
        await echoEach(ws, inbox, sequence, name);
        await closeCleanly(ws);
      });
    }
  });
}

test("four connections at once, each a different configuration, every size", options, async (t) => {
  const ids = ["plain", "deflate-all", "deflate-client-no-takeover", "deflate-no-takeover"];
  const configs = CONFIGS.filter((config) => ids.includes(config.id));
  await Promise.all(configs.map(async (config) => {
    const messages = SIZES.flatMap((size) => KINDS.map((kind) => payload(kind, size, `${config.id}-${kind}-${size}`)));
    const { ws, inbox } = await connect(t, urlFor(config), config);
    await echoEach(ws, inbox, messages, `every size over ${config.id}`);
    await closeCleanly(ws);
  }));
});

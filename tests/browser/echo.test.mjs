// Chromium's own WebSocket against the echo plugin: permessage-deflate as a browser
// negotiates it (with context takeover), every size the RFC's length encodings
// distinguish, and empty messages between others (an empty compressed message once
// made Chromium fail the connection with 1006).
//
// Needs: HOST (the host binary), PLUGIN_DIR (echo.wasm), Debian's /usr/bin/chromium.

import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { useChromium, pluginDir, root, startHost } from "./support.mjs";

const { browser: chromium, work } = useChromium("browser-echo");

/**
 * In the page: opens a WebSocket to `url`, sends each message in `plan` ({text} or
 * {bytes: length}) and waits for its echo; returns what the page saw.
 */
async function echoInPage(page, url, plan) {
  return page.evaluate(async ({ url, plan }) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const inbox = [];
    let wake = null;
    let closed = null;
    ws.onmessage = (event) => { inbox.push(event.data); wake?.(); };
    ws.onclose = (event) => { closed = `${event.code} ${event.reason}`; wake?.(); };
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("no connection")); });
    const next = async () => {
      while (inbox.length === 0) {
        if (closed) throw new Error(`closed: ${closed}`);
        await new Promise((ok) => { wake = ok; });
      }
      return inbox.shift();
    };
    const results = [];
    for (const step of plan) {
      if ("text" in step) {
        ws.send(step.text);
        const got = await next();
        results.push(got === step.text ? "ok" : `text ${JSON.stringify(step.text).slice(0, 40)} came back as ${String(got).slice(0, 40)}`);
      } else {
        const sent = new Uint8Array(step.bytes).map((_, i) => (i * 31 + 7) & 0xff);
        ws.send(sent);
        const got = new Uint8Array(await next());
        const same = got.length === sent.length && got.every((b, i) => b === sent[i]);
        results.push(same ? "ok" : `${step.bytes} bytes came back as ${got.length} different bytes`);
      }
    }
    const extensions = ws.extensions;
    ws.close(1000);
    return { results, extensions };
  }, { url, plan });
}

const SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20];

for (const compression of [true, false]) {
  test(`Chromium echoes every size and empty messages, compression ${compression ? "on" : "off"}`, { timeout: 60_000 }, async () => {
    const { child, url } = startHost(join(pluginDir, "echo.wasm"), [
      "--cache-dir", join(work, "cache"), "--max-payload-size", String(2 << 20), "--compression", String(compression),
      // A page of the host's own origin: Chromium keeps pages of no origin off loopback.
      "--static", join(root, "examples/chat"),
    ]);
    try {
      const pageUrl = await url;
      const page = await (await chromium().newContext()).newPage();
      await page.goto(pageUrl);
      const plan = [
        { text: "hello" }, { text: "" }, { text: "world" }, { text: "" }, { text: "" }, { text: "after two empty" },
        ...SIZES.map((bytes) => ({ bytes })),
        ...SIZES.map((n) => ({ text: "é".repeat(Math.floor(n / 2)) + "x".repeat(n % 2) })),
        { bytes: 0 }, { text: "last" },
      ];
      const { results, extensions } = await echoInPage(page, pageUrl.replace(/^http/, "ws"), plan);
      assert.equal(extensions.startsWith("permessage-deflate"), compression, `negotiated: ${extensions}`);
      assert.deepEqual(results.filter((r) => r !== "ok"), []);
      assert.equal(results.length, plan.length);
      await page.context().close();
    } finally {
      child.kill("SIGTERM");
    }
  });
}

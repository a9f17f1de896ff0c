// The chat example in a real browser: two Chromium contexts open the page that
// `host --static examples/chat` serves, one types a message, the other sees it.
// Runs over ws:// and over wss:// with a throw-away certificate.
//
// Needs: HOST (the host binary), PLUGIN_DIR (or CHAT_PLUGIN), Debian's /usr/bin/chromium.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { useChromium, pluginDir, root, startHost as startAnyHost } from "./support.mjs";

const chatPlugin = process.env.CHAT_PLUGIN ?? join(pluginDir, "chat.wasm");
const { browser: chromium, work } = useChromium("browser");

/** The chat host, serving the example page. */
function startHost(extraArgs) {
  return startAnyHost(chatPlugin, [
    "--static", join(root, "examples/chat"), "--cache-dir", join(work, "cache"), ...extraArgs,
  ]);
}

/** A self-signed certificate for 127.0.0.1, key and chain in one PEM as the original library required. */
function makeCertificate() {
  const key = join(work, "key.pem");
  const cert = join(work, "cert.pem");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert,
  ], { stdio: "ignore" });
  const combined = join(work, "combined.pem");
  execFileSync("sh", ["-c", `cat "${cert}" "${key}" > "${combined}"`]);
  return combined;
}

async function chatBetweenTwoBrowsers(url) {
  const alice = await (await chromium().newContext({ ignoreHTTPSErrors: true })).newPage();
  const bob = await (await chromium().newContext({ ignoreHTTPSErrors: true })).newPage();
  await alice.goto(`${url}?name=alice`);
  await alice.getByText("Welcome, alice.").waitFor();
  await bob.goto(`${url}?name=bob`);
  await bob.getByText("Welcome, bob.").waitFor();
  // Alice learns that bob joined.
  await alice.locator("#log li", { hasText: "bob" }).filter({ hasText: "joined" }).waitFor();

  await alice.locator("#message").fill("hello from alice");
  await alice.locator("#submit").click();
  const line = bob.locator("#log li.message", { hasText: "hello from alice" });
  await line.waitFor();
  assert.equal(await line.locator(".name").textContent(), "alice");

  await bob.locator("#message").fill("hi alice");
  await bob.locator("#message").press("Enter");
  await alice.locator("#log li.message", { hasText: "hi alice" }).waitFor();

  await bob.context().close();
  await alice.locator("#log li", { hasText: "bob" }).filter({ hasText: "left" }).waitFor();
  await alice.context().close();
}

for (const scheme of ["ws", "wss"]) {
  test(`two browsers chat over ${scheme}://`, { timeout: 60_000 }, async () => {
    const args = scheme === "wss" ? ["--ssl", "true", "--cert-file", makeCertificate()] : [];
    const { child, url } = startHost(args);
    try {
      const pageUrl = await url;
      assert.ok(pageUrl.startsWith(scheme === "wss" ? "https://" : "http://"));
      await chatBetweenTwoBrowsers(pageUrl);
    } finally {
      child.kill("SIGTERM");
    }
  });
}

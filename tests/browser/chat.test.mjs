// The chat example in a real browser: Chromium contexts open the page that
// `host --static examples/chat` serves, join with a name (typed, or ?name= in the
// page's URL), and chat: a newcomer sees the earlier messages as history, a refused
// name (missing or taken) is reported and another can be tried. Runs over ws:// and
// over wss:// with a throw-away certificate; each host has a store of its own.
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

/** A page of its own (a separate browser context: no shared storage). */
async function newPage() {
  return (await chromium().newContext({ ignoreHTTPSErrors: true })).newPage();
}

/** Asks for `name` in the page's join form and waits for the welcome. */
async function joinAs(page, name) {
  await page.locator("#name").fill(name);
  await page.locator("#join-button").click();
  await page.getByText(`Welcome, ${name}.`).waitFor();
}

async function say(page, text) {
  await page.locator("#message").fill(text);
  await page.locator("#submit").click();
}

async function chatBetweenTwoBrowsers(url) {
  // Alice asks for her name on the page; she is alone, and says something.
  const alice = await newPage();
  await alice.goto(url);
  assert.ok(await alice.locator("#message").isDisabled(), "no messages before joining");
  await joinAs(alice, "alice");
  await say(alice, "anyone here?");
  await alice.locator("#log li.message", { hasText: "anyone here?" }).waitFor();

  // Bob joins with ?name= in the page's URL and sees what alice said before, as history.
  const bob = await newPage();
  await bob.goto(`${url}?name=bob`);
  await bob.getByText("Welcome, bob.").waitFor();
  const earlier = bob.locator("#log li.message.history", { hasText: "anyone here?" });
  await earlier.waitFor();
  assert.equal(await earlier.locator(".name").textContent(), "alice");
  // Alice learns that bob joined; both are listed.
  await alice.locator("#log li", { hasText: "bob" }).filter({ hasText: "joined" }).waitFor();
  await alice.locator("#users li", { hasText: "bob" }).waitFor();
  await bob.locator("#users li", { hasText: "alice" }).waitFor();

  await say(alice, "hello from alice");
  const line = bob.locator("#log li.message", { hasText: "hello from alice" });
  await line.waitFor();
  assert.equal(await line.locator(".name").textContent(), "alice");

  await bob.locator("#message").fill("hi alice");
  await bob.locator("#message").press("Enter");
  await alice.locator("#log li.message", { hasText: "hi alice" }).waitFor();

  // A rename to a taken name is refused to bob alone.
  await say(bob, "/name alice");
  await bob.locator("#log li.error", { hasText: "that name is taken" }).waitFor();

  await bob.context().close();
  await alice.locator("#log li", { hasText: "bob" }).filter({ hasText: "left" }).waitFor();
  await alice.context().close();
}

/** The handshake refuses a missing or taken name; the page says so and lets one retry. */
async function refusedNameThenRetry(url) {
  const dana = await newPage();
  await dana.goto(`${url}?name=dana`);
  await dana.getByText("Welcome, dana.").waitFor();
  // A host of its own has a store of its own: nothing was said here before.
  assert.equal(await dana.locator("#log li.history").count(), 0, "history from another test");

  const other = await newPage();
  await other.goto(url);
  for (const name of ["dana", "!!"]) {
    await other.locator("#name").fill(name);
    await other.locator("#join-button").click();
    await other.locator("#join-error", { hasText: "missing or taken" }).waitFor();
    assert.ok(await other.locator("#message").isDisabled(), `joined as ${name}`);
  }
  await joinAs(other, "erin");
  await other.locator("#users li", { hasText: "dana" }).waitFor();
  await dana.locator("#log li", { hasText: "erin" }).filter({ hasText: "joined" }).waitFor();
  await other.context().close();
  await dana.context().close();
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

test("a refused name is reported and another can be tried", { timeout: 60_000 }, async () => {
  const { child, url } = startHost([]);
  try {
    await refusedNameThenRetry(await url);
  } finally {
    child.kill("SIGTERM");
  }
});

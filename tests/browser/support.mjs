// What the browser tests share: Debian's Chromium, driven by playwright-core, and the
// host binary started on a free port.

import { before, after } from "node:test";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

export const root = resolve(import.meta.dirname, "../..");
export const hostBinary = process.env.HOST ?? join(root, "target/debug/host");
export const pluginDir = process.env.PLUGIN_DIR ?? join(root, "target/wasm32-wasip2/release");

/**
 * For a test file: one Chromium for all its tests and a scratch directory, both gone
 * after them. Returns `{ browser, work }`; `browser()` is valid inside the tests.
 */
export function useChromium(label) {
  const work = mkdtempSync(join(tmpdir(), `wsplug-${label}-`));
  let browser;
  before(async () => {
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    rmSync(work, { recursive: true, force: true });
  });
  return { browser: () => browser, work };
}

/** Headless Chromium with the flags this machine's closed network needs. */
function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

/**
 * Starts `host --plugin <plugin> <args>` on 127.0.0.1:0; `url` resolves with the page
 * URL (http or https) once it prints `wsplug listening on`. Unless `args` names one,
 * the host gets a key-value store of its own (`--store-dir`, a fresh temporary
 * directory removed when it exits), so that tests never share stored data.
 */
export function startHost(plugin, args = []) {
  const store = args.includes("--store-dir") ? null : mkdtempSync(join(tmpdir(), "wsplug-store-"));
  const storeArgs = store ? ["--store-dir", store] : [];
  const child = spawn(hostBinary, ["--listen", "127.0.0.1:0", "--plugin", plugin, ...storeArgs, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  if (store) child.on("exit", () => rmSync(store, { recursive: true, force: true }));
  const url = new Promise((resolveUrl, reject) => {
    child.on("exit", (code) => reject(new Error(`host exited with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const match = line.match(/wsplug listening on (wss?):\/\/(\S+)/);
      if (match) resolveUrl(`${match[1] === "wss" ? "https" : "http"}://${match[2]}/`);
    });
  });
  return { child, url };
}

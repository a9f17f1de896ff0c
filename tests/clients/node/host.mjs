// Starts the real `host` binary with a real plugin for one test file.
//
// HOST and PLUGIN_DIR (environment) override the default paths under target/.
// WSPLUG_CACHE_DIR lets several test files share one compile cache (each file runs in
// its own process under `node --test`); without it each file gets a fresh one.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, before } from "node:test";

const root = resolve(import.meta.dirname, "../../..");
const hostBinary = process.env.HOST ?? join(root, "target/debug/host");
const pluginDir = process.env.PLUGIN_DIR ?? join(root, "target/wasm32-wasip2/release");

// A cold start compiles the plugin in the debug host; a cached one takes milliseconds.
const STARTUP_TIMEOUT_MS = 120_000;
// Room for the 1 MiB messages (the host's default limit is 512 KiB).
export const MAX_PAYLOAD = 2 * 1024 * 1024;

/**
 * Resolves with `{ url, stop }` once the host prints `wsplug listening on ws://ADDR`.
 * `stop()` sends SIGTERM and rejects unless the host exits 0, as it documents.
 */
export function startHost(plugin, extraArgs = []) {
  const ownCache = process.env.WSPLUG_CACHE_DIR ? null : mkdtempSync(join(tmpdir(), "wsplug-node-"));
  const child = spawn(hostBinary, [
    "--listen", "127.0.0.1:0",
    "--plugin", join(pluginDir, plugin),
    "--cache-dir", process.env.WSPLUG_CACHE_DIR ?? ownCache,
    "--max-payload-size", String(MAX_PAYLOAD),
    ...extraArgs,
  ], { stdio: ["ignore", "pipe", "inherit"] });

  const exited = new Promise((resolveExit) => child.on("exit", (code, signal) => resolveExit({ code, signal })));
  const url = new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`host printed no listening line within ${STARTUP_TIMEOUT_MS} ms`));
    }, STARTUP_TIMEOUT_MS);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`host exited (${code ?? signal}) before listening`));
    });
    // Keeps reading stdout after the line, so the pipe never fills.
    createInterface({ input: child.stdout }).on("line", (line) => {
      const match = line.match(/wsplug listening on (ws:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolveUrl(match[1]);
      }
    });
  });

  async function stop() {
    try {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`host died during the tests (${child.exitCode ?? child.signalCode})`);
      }
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
      const { code, signal } = await exited;
      clearTimeout(timer);
      if (code !== 0) throw new Error(`host exited with ${code ?? signal} on SIGTERM`);
    } finally {
      if (ownCache) rmSync(ownCache, { recursive: true, force: true });
    }
  }

  return url.then((address) => ({ url: address, stop }));
}

/**
 * The echo hosts a test file's client configurations (support.mjs CONFIGS) talk to:
 * compression on, compression off, and compression on with the plugin served as
 * stateless. Starts them before the file's tests and stops them after; returns the
 * URL for a configuration.
 */
export function echoHosts() {
  const hosts = {};
  before(async () => {
    [hosts.compressing, hosts.uncompressed, hosts.stateless] = await Promise.all([
      startHost("echo.wasm"),
      startHost("echo.wasm", ["--compression", "false"]),
      startHost("echo.wasm", ["--stateless"]),
    ]);
  });
  after(async () => {
    await Promise.all(Object.values(hosts).map((host) => host?.stop()));
  });
  return (config) => {
    if (config.stateless) return hosts.stateless.url;
    return (config.serverCompression ? hosts.compressing : hosts.uncompressed).url;
  };
}

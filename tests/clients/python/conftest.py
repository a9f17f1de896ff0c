"""Fixtures of the websockets client suite: the real `host` binary with a real plugin.

Each host runs for one test module (`scope="module"`): every test opens its own
connections and closes them, so tests do not see each other's traffic. The compile
cache is shared by the whole session, so only the first start compiles a plugin.

HOST and PLUGIN_DIR (environment) override the default paths under target/.

Tests are `async def` functions run by the small `pytest_pyfunc_call` hook below
(no pytest-asyncio needed); each gets a deadline so that a hang becomes a failure.
"""

import asyncio
import inspect
import os
import queue
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HOST = Path(os.environ.get("HOST", ROOT / "target/debug/host"))
PLUGIN_DIR = Path(os.environ.get("PLUGIN_DIR", ROOT / "target/wasm32-wasip2/release"))

# A cold start compiles the plugin with the debug host; later starts hit the cache.
STARTUP_TIMEOUT = 120
# The whole of one test, handshakes included. Only turns a hang into a failure.
TEST_TIMEOUT = 90
# Room for the 1 MiB messages (the host's default limit is 512 KiB).
MAX_PAYLOAD = 2 * 1024 * 1024

LISTENING = re.compile(r"wsplug listening on (ws://\S+)")


class Host:
    """One `host` process; `url` is known once it has printed its listening line."""

    def __init__(self, plugin, cache_dir, extra_args=()):
        self.process = subprocess.Popen(
            [
                str(HOST),
                "--listen", "127.0.0.1:0",
                "--plugin", str(PLUGIN_DIR / plugin),
                "--cache-dir", str(cache_dir),
                *extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        # stdout is read on a thread for the whole life of the process: the
        # listening line goes to `lines`, and later output never fills the pipe.
        lines = queue.Queue()
        threading.Thread(target=self._pump, args=(lines,), daemon=True).start()
        self.url = self._wait_for_url(lines)

    def _pump(self, lines):
        for line in self.process.stdout:
            lines.put(line)
        lines.put(None)  # end of file: the process exited

    def _wait_for_url(self, lines):
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                self.process.kill()
                raise RuntimeError(f"host printed no listening line in {STARTUP_TIMEOUT} s")
            if line is None:
                raise RuntimeError(f"host exited with {self.process.wait()} before listening")
            match = LISTENING.search(line)
            if match:
                return match.group(1)

    def stop(self):
        """SIGTERM, and check that the host shut down cleanly (exit 0, as documented)."""
        if self.process.poll() is not None:
            raise AssertionError(f"host died during the tests, exit status {self.process.returncode}")
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("host did not exit within 30 s of SIGTERM")
        assert status == 0, f"host exited with {status} on SIGTERM"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("wsplug-cache")


def _host(cache_dir, plugin, *extra_args):
    host = Host(plugin, cache_dir, ("--max-payload-size", str(MAX_PAYLOAD), *extra_args))
    yield host
    host.stop()


@pytest.fixture(scope="module")
def echo_host(cache_dir):
    """echo.wasm with compression on (the default)."""
    yield from _host(cache_dir, "echo.wasm")


@pytest.fixture(scope="module")
def echo_host_uncompressed(cache_dir):
    """echo.wasm with `--compression false`: it must decline the client's offer."""
    yield from _host(cache_dir, "echo.wasm", "--compression", "false")


@pytest.fixture(scope="module")
def echo_host_stateless(cache_dir):
    """echo.wasm served as stateless (an instance on each runtime thread), compression on."""
    yield from _host(cache_dir, "echo.wasm", "--stateless")


@pytest.fixture(scope="module")
def api_host(cache_dir, tmp_path_factory):
    """api.wasm (plugin API 0.2 on command), a short CPU deadline, a store of its own."""
    store = tmp_path_factory.mktemp("wsplug-store")
    yield from _host(cache_dir, "api.wasm", "--plugin-deadline-ms", "100", "--store-dir", str(store))


@pytest.fixture(scope="module")
def chat_host(cache_dir, tmp_path_factory):
    """chat.wasm (names at the handshake, history in the store), with a store of its own."""
    store = tmp_path_factory.mktemp("wsplug-store")
    yield from _host(cache_dir, "chat.wasm", "--store-dir", str(store))


@pytest.fixture(scope="module")
def broadcast_host(cache_dir):
    """broadcast.wasm: every message goes to every other connection."""
    yield from _host(cache_dir, "broadcast.wasm")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs `async def` tests in a fresh event loop, under TEST_TIMEOUT."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run():
        async with asyncio.timeout(TEST_TIMEOUT):
            await pyfuncitem.obj(**args)

    asyncio.run(run())
    return True


@pytest.fixture
def echo_url(request, config):
    """The URL of the echo host that the parametrized client `config` is meant for."""
    return request.getfixturevalue(config.host_fixture()).url

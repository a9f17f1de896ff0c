"""Two hosts sharing a Redis server (a redis-server of the module's own, on a free port)
relay broadcast.wasm's fan-out as `websockets` sees it: a burst from a client of one
host reaches an idle reader on the other host whole, in order, compressed or not, and
every client stays connected. REDIS_SERVER (environment) overrides `redis-server`."""

import os
import socket
import subprocess

import pytest

from conftest import _host
from support import (
    COMPRESSING_HOST_CONFIGS,
    assert_same,
    close_cleanly,
    config_params,
    payload,
    recv,
    report_close,
)

# Chat-sized lines, and a few messages larger than one TCP segment and than Redis's
# 16 KiB read buffer.
SIZES = [20 + i % 100 for i in range(150)] + [70_000, 200_000, 16_384]


@pytest.fixture(scope="module")
def redis_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [os.environ.get("REDIS_SERVER", "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in server.stdout:
        if "Ready to accept connections" in line:
            break
    else:
        raise RuntimeError(f"redis-server exited with {server.wait()} before it was ready")
    yield f"redis://127.0.0.1:{port}"
    server.kill()
    server.wait()


@pytest.fixture(scope="module")
def cluster_a(cache_dir, redis_url):
    yield from _host(cache_dir, "broadcast.wasm", "--cluster", redis_url)


@pytest.fixture(scope="module")
def cluster_b(cache_dir, redis_url, cluster_a):
    yield from _host(cache_dir, "broadcast.wasm", "--cluster", redis_url)


@pytest.mark.parametrize("kind", ["text", "binary"])
@config_params(COMPRESSING_HOST_CONFIGS)
async def test_burst_reaches_a_reader_on_another_host(config, cluster_a, cluster_b, kind):
    messages = [payload(kind, size, seed=f"cluster-{kind}-{i}") for i, size in enumerate(SIZES)]
    async with config.connect(cluster_a.url) as sender, config.connect(cluster_b.url) as reader:
        config.check_negotiated(sender)
        config.check_negotiated(reader)
        # The reader's "ready" crossing from host B to the sender on host A shows the
        # path works and that host B told the cluster of the reader before it.
        await reader.send("ready")
        assert_same(await recv(sender, "the reader's ready, across hosts"), "ready")

        with report_close(lambda: f"sending {len(messages)} messages"):
            for message in messages:
                await sender.send(message)
        received = 0
        with report_close(lambda: f"the reader got {received} of {len(messages)}"):
            for index, message in enumerate(messages):
                assert_same(await recv(reader, f"broadcast {index}"), message, f"broadcast {index}")
                received += 1
            await reader.send("got them all")
            assert_same(await recv(sender, "the reader's reply"), "got them all")
        await close_cleanly(reader)
        await close_cleanly(sender)

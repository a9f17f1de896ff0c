"""A chat-like fan-out through broadcast.wasm: one client sends a burst of 150, an idle
client that reads everything must get all 150, in order, and stay connected."""

import pytest

from support import (
    COMPRESSING_HOST_CONFIGS,
    assert_same,
    close_cleanly,
    config_params,
    payload,
    recv,
    report_close,
)

COUNT = 150


@pytest.mark.parametrize("kind", ["text", "binary"])
@config_params(COMPRESSING_HOST_CONFIGS)
async def test_idle_reader_gets_whole_burst(config, broadcast_host, kind):
    # Chat-sized lines, 20 to 119 bytes.
    messages = [payload(kind, 20 + i % 100, seed=f"chat-{kind}-{i}") for i in range(COUNT)]
    async with config.connect(broadcast_host.url) as sender, config.connect(broadcast_host.url) as reader:
        config.check_negotiated(sender)
        config.check_negotiated(reader)
        # Broadcasts reach the connections the plugin has seen open. The host queues a
        # connection's on-open right as it answers the handshake, and the plugin handles
        # each connection's events in order, so the sender getting the reader's "ready"
        # shows that both are in the room before the burst.
        await reader.send("ready")
        assert_same(await recv(sender, "the reader's ready"), "ready")

        with report_close(lambda: f"sending {COUNT} messages"):
            for message in messages:
                await sender.send(message)
        received = 0
        with report_close(lambda: f"the reader got {received} of {COUNT}"):
            for index, message in enumerate(messages):
                assert_same(await recv(reader, f"broadcast {index}"), message, f"broadcast {index}")
                received += 1
            # Both still connected: the reader's reply reaches the sender.
            await reader.send("got them all")
            assert_same(await recv(sender, "the reader's reply"), "got them all")
        await close_cleanly(reader)
        await close_cleanly(sender)

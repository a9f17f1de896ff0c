"""1000 small messages to echo.wasm, every echo checked in order, and the connection
still usable afterwards (one more round trip, then a clean 1000 close).

Two ways of sending: the whole burst written before reading any echo (the client
buffers what arrives meanwhile; past its `max_queue` it stops reading and TCP holds
the rest), and one task sending while another reads the echoes as they come.
"""

import asyncio

import pytest

from support import assert_same, close_cleanly, config_params, payload, recv, report_close

COUNT = 1000


def burst(kind):
    # 5 to 64 bytes, random content: every message differs from its neighbours,
    # so an echo out of order or a lost one cannot go unnoticed.
    return [payload(kind, 5 + i % 60, seed=f"burst-{kind}-{i}") for i in range(COUNT)]


async def still_open(ws):
    """The connection survived: one more echo, then the closing handshake."""
    await ws.send("after the burst")
    assert_same(await recv(ws, "echo after the burst"), "after the burst")
    await close_cleanly(ws)


@pytest.mark.parametrize("kind", ["text", "binary"])
@config_params()
async def test_burst_written_before_reading(config, echo_url, kind):
    messages = burst(kind)
    async with config.connect(echo_url) as ws:
        config.check_negotiated(ws)
        sent = 0
        with report_close(lambda: f"sending {sent} of {COUNT} messages, none read yet"):
            for message in messages:
                await ws.send(message)
                sent += 1
        received = 0
        with report_close(lambda: f"{received} of {COUNT} echoes"):
            for index, message in enumerate(messages):
                assert_same(await recv(ws, f"echo {index}"), message, f"echo {index}")
                received += 1
            await still_open(ws)


@pytest.mark.parametrize("kind", ["text", "binary"])
@config_params()
async def test_burst_read_while_sending(config, echo_url, kind):
    messages = burst(kind)
    async with config.connect(echo_url) as ws:
        config.check_negotiated(ws)

        async def send_all():
            for message in messages:
                await ws.send(message)

        sender = asyncio.create_task(send_all())
        received = 0
        try:
            with report_close(lambda: f"{received} of {COUNT} echoes, read while sending"):
                for index, message in enumerate(messages):
                    assert_same(await recv(ws, f"echo {index}"), message, f"echo {index}")
                    received += 1
                await sender
                await still_open(ws)
        finally:
            # If reading failed, the sender may still be blocked or have failed too.
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

"""echo.wasm through websockets: negotiation, every frame-length boundary, empty messages.

Each test runs once per client configuration (support.CONFIGS): no compression, the
default permessage-deflate offer, without client context takeover, without either
context takeover, and an offer to a host that has compression off.
"""

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

# 125/126 and 65535/65536 are where the frame header switches from a 7-bit length to
# a 16-bit one and from 16-bit to 64-bit; 1 MiB spans many inflate/deflate buffers.
SIZES = [0, 1, 125, 126, 65535, 65536, 1024 * 1024]


@config_params()
async def test_handshake_negotiates_what_was_offered(config, echo_url):
    async with config.connect(echo_url) as ws:
        config.check_negotiated(ws)
        await ws.send("ping")
        assert_same(await recv(ws), "ping")
        await close_cleanly(ws)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["text", "binary"])
@config_params()
async def test_echo_of_size(config, echo_url, kind, size):
    message = payload(kind, size, seed=f"{kind}-{size}")
    async with config.connect(echo_url) as ws:
        config.check_negotiated(ws)
        with report_close(lambda: f"sending {size} bytes of {kind}"):
            await ws.send(message)
            assert_same(await recv(ws), message, f"{kind} echo of {size} bytes")
        await close_cleanly(ws)


@config_params(COMPRESSING_HOST_CONFIGS)
async def test_every_size_on_one_connection(config, echo_url):
    """All sizes, text and binary alternating, on one connection: with context
    takeover every message is compressed against the ones before it."""
    messages = [payload(kind, size, seed=f"{kind}-{size}") for size in SIZES for kind in ("text", "binary")]
    async with config.connect(echo_url) as ws:
        config.check_negotiated(ws)
        for index, message in enumerate(messages):
            with report_close(lambda: f"{index} of {len(messages)} echoes"):
                await ws.send(message)
                assert_same(await recv(ws), message, f"echo {index} ({len(message)} long)")
        await close_cleanly(ws)


EMPTY_SEQUENCES = {
    "text": ["hello", "", "world"],
    "binary": [b"hello", b"", b"world"],
    "text-several-empty": ["", "hello", "", "", "world", ""],
    "binary-several-empty": [b"", b"hello", b"", b"", b"world", b""],
    "mixed": ["hello", b"", "world", "", b"bytes", "end"],
}


@pytest.mark.parametrize("sequence", EMPTY_SEQUENCES.values(), ids=EMPTY_SEQUENCES.keys())
@config_params()
async def test_empty_messages_between_others(config, echo_url, sequence):
    async with config.connect(echo_url) as ws:
        config.check_negotiated(ws)
        for index, message in enumerate(sequence):
            with report_close(lambda: f"{index} of {len(sequence)} echoes of {sequence!r}"):
                await ws.send(message)
                assert_same(await recv(ws), message, f"echo {index} of {sequence!r}")
        await close_cleanly(ws)

"""What the websockets client tests share: client configurations, payloads and checks."""

import asyncio
import contextlib
import dataclasses
import random

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)

# Messages of up to 1 MiB come back; the client's default limit is exactly 1 MiB.
CLIENT_MAX_SIZE = 4 * 1024 * 1024
# One message, or one step of a test; generous for the debug host deflating 1 MiB.
RECV_TIMEOUT = 30


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How the client connects, and what permessage-deflate must be negotiated."""

    id: str
    # Offer permessage-deflate at all.
    offer: bool
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    # False: the host runs with `--compression false` and must decline the offer.
    server_compression: bool = True
    # True: the host serves the plugin as stateless (`--stateless`): it runs on the
    # connections' threads, and its replies skip the outbound queue.
    stateless: bool = False

    @property
    def compressed(self):
        return self.offer and self.server_compression

    def host_fixture(self):
        if self.stateless:
            return "echo_host_stateless"
        return "echo_host" if self.server_compression else "echo_host_uncompressed"

    def connect(self, url, **kwargs):
        if not self.offer:
            return connect(url, compression=None, max_size=CLIENT_MAX_SIZE, **kwargs)
        extensions = None
        if self.server_no_context_takeover or self.client_no_context_takeover:
            extensions = [
                ClientPerMessageDeflateFactory(
                    server_no_context_takeover=self.server_no_context_takeover,
                    client_no_context_takeover=self.client_no_context_takeover,
                )
            ]
        # With extensions=None, compression="deflate" offers websockets' default:
        # context takeover both ways, client_max_window_bits without a value.
        return connect(
            url,
            compression="deflate",
            extensions=extensions,
            max_size=CLIENT_MAX_SIZE,
            **kwargs,
        )

    def check_negotiated(self, ws):
        """The extension the handshake settled on is the one this configuration expects."""
        extensions = ws.protocol.extensions
        if not self.compressed:
            assert extensions == [], f"no compression expected, got {extensions}"
            return
        assert len(extensions) == 1 and isinstance(extensions[0], PerMessageDeflate), extensions
        deflate = extensions[0]
        # "remote" is the server's side of the extension, "local" the client's.
        assert deflate.remote_no_context_takeover == self.server_no_context_takeover
        assert deflate.local_no_context_takeover == self.client_no_context_takeover


CONFIGS = [
    ClientConfig("plain", offer=False),
    ClientConfig("deflate", offer=True),
    ClientConfig("deflate-client-no-takeover", offer=True, client_no_context_takeover=True),
    ClientConfig(
        "deflate-no-takeover",
        offer=True,
        server_no_context_takeover=True,
        client_no_context_takeover=True,
    ),
    ClientConfig("deflate-declined", offer=True, server_compression=False),
    ClientConfig("plain-stateless", offer=False, stateless=True),
    ClientConfig("deflate-stateless", offer=True, stateless=True),
]

# The client configurations for a host of a test's own with compression on
# (broadcast.wasm runs with it); whether it is stateless is that host's business.
COMPRESSING_HOST_CONFIGS = [c for c in CONFIGS if c.server_compression and not c.stateless]


def config_params(configs=CONFIGS):
    return pytest.mark.parametrize("config", configs, ids=[c.id for c in configs])


# Characters of 1, 2, 3 and 4 bytes in UTF-8, so that text crosses every kind of
# character boundary, also at the frame and inflate buffer edges.
TEXT_ALPHABET = "abcxyz019 ~" + "éßЖ" + "€中✓" + "😀𝄞"


def text_of_size(size, seed):
    """A random str whose UTF-8 encoding is exactly `size` bytes."""
    rng = random.Random(seed)
    chars, used = [], 0
    while used < size:
        char = rng.choice(TEXT_ALPHABET)
        width = len(char.encode())
        if used + width > size:
            char, width = "a", 1
        chars.append(char)
        used += width
    text = "".join(chars)
    assert len(text.encode()) == size
    return text


def bytes_of_size(size, seed):
    """Random (incompressible) bytes."""
    return random.Random(seed).randbytes(size)


def payload(kind, size, seed):
    return text_of_size(size, seed) if kind == "text" else bytes_of_size(size, seed)


def assert_same(received, sent, what="message"):
    """Equality, type included, with a short report instead of a megabyte-long diff."""
    assert type(received) is type(sent), (
        f"{what}: sent {type(sent).__name__}, received {type(received).__name__}"
    )
    if received == sent:
        return
    a = received.encode() if isinstance(received, str) else received
    b = sent.encode() if isinstance(sent, str) else sent
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    pytest.fail(
        f"{what}: sent {len(b)} bytes, received {len(a)}; first difference at byte {first}: "
        f"sent {b[first:first + 16]!r}, received {a[first:first + 16]!r}"
    )


async def recv(ws, what="message"):
    """One message, failing the test (rather than hanging) if none comes."""
    try:
        async with asyncio.timeout(RECV_TIMEOUT):
            return await ws.recv()
    except TimeoutError:
        pytest.fail(f"no {what} within {RECV_TIMEOUT} s")


async def close_cleanly(ws):
    """Closes with 1000 and checks that the host answered the close with 1000."""
    async with asyncio.timeout(RECV_TIMEOUT):
        await ws.close()
    assert ws.close_code == 1000, f"host answered the close with {ws.close_code} {ws.close_reason!r}"


@contextlib.contextmanager
def report_close(progress):
    """Turns a closed connection into a failure that says how far the test got."""
    try:
        yield
    except websockets.ConnectionClosed as closed:
        pytest.fail(f"connection closed after {progress()}: {closed}")

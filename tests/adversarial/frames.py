"""RFC 6455 on the wire, written out by hand: the opening handshake, masked client
frames and an incremental parser of server frames. No I/O here (used by the
asyncio harness and by the blocking bystander process), and no WebSocket library,
so that the tests decide every byte they send.
"""

import base64
import hashlib
import os
import struct

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
FIXED_MASK = b"\x37\xfa\x21\x3d"


def mask_payload(data, key):
    """XORs `data` with the 4-byte `key` (RFC 6455 section 5.3)."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def frame(opcode, payload=b"", *, fin=True, rsv1=False, rsv2=False, rsv3=False,
          mask=True, key=None, length=None):
    """One client frame. `length` overrides the announced payload length (to lie about it);
    `key` defaults to a random masking key; `mask=False` sends it unmasked (a violation)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0) | (0x10 if rsv3 else 0) | (opcode & 0x0F)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4) if key is None else key
    return head + key + mask_payload(payload, key)


def close_frame(code=1000, reason=b"", **kw):
    return frame(OP_CLOSE, struct.pack("!H", code) + reason, **kw)


def new_key():
    return base64.b64encode(os.urandom(16)).decode()


def accept_value(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def handshake_request(authority, *, path="/", key=None, extensions=None, extra_headers=()):
    """A valid upgrade request (bytes) and the key it carries."""
    key = key or new_key()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {authority}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    lines.extend(extra_headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def parse_response_head(head):
    """(status, {lower-case name: value}) of an HTTP response head (bytes, up to the blank line)."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"not an HTTP response: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


class Frame:
    __slots__ = ("fin", "rsv1", "opcode", "payload", "masked")

    def __init__(self, fin, rsv1, opcode, payload, masked):
        self.fin, self.rsv1, self.opcode, self.payload, self.masked = fin, rsv1, opcode, payload, masked

    def close_code(self):
        """The code of a close frame, 1005 if it carries none."""
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else 1005

    def __repr__(self):
        return f"Frame(op={self.opcode:#x}, fin={self.fin}, rsv1={self.rsv1}, len={len(self.payload)})"


class ProtocolViolation(Exception):
    """The server sent something RFC 6455 forbids a server to send."""


class FrameParser:
    """Incremental parser of server frames: feed bytes, get complete frames."""

    def __init__(self, max_payload=64 << 20):
        self.buf = bytearray()
        self.pos = 0  # start of the unparsed bytes in buf
        self.max_payload = max_payload

    def feed(self, data):
        if self.pos:
            del self.buf[:self.pos]  # compact once per feed, not once per frame
            self.pos = 0
        self.buf += data
        out = []
        while True:
            f = self._one()
            if f is None:
                return out
            out.append(f)

    def _one(self):
        buf, start = self.buf, self.pos
        avail = len(buf) - start
        if avail < 2:
            return None
        b0, b1 = buf[start], buf[start + 1]
        n = b1 & 0x7F
        head = 2
        if n == 126:
            if avail < 4:
                return None
            n = struct.unpack_from("!H", buf, start + 2)[0]
            head = 4
        elif n == 127:
            if avail < 10:
                return None
            n = struct.unpack_from("!Q", buf, start + 2)[0]
            head = 10
        masked = bool(b1 & 0x80)
        if masked:
            raise ProtocolViolation("server frame is masked")
        if b0 & 0x30:
            raise ProtocolViolation("server frame has RSV2/RSV3 set")
        if n > self.max_payload:
            raise ProtocolViolation(f"server frame of {n} bytes")
        if avail < head + n:
            return None
        payload = bytes(buf[start + head:start + head + n])
        self.pos = start + head + n
        return Frame(bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, payload, masked)

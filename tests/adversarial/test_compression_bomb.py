"""Compression bombs (permessage-deflate, --max-payload-size 1 MiB).

- 256 MiB of zeros deflated to ~256 KiB, sent as one binary frame; the same as a
  text frame; and the same split into 4 KiB continuation frames. Each must be
  closed with 1009, with the server inflating at most about the limit: 8 bombs at
  once must not grow RSS by more than a few times the limit.
- A message that inflates to just under the limit must still be echoed (the limit,
  not compression, is what refuses the bombs)."""

import asyncio
import zlib

import frames as wf
from harness import MIB, Closed, WsClient, repeat

LIMIT = 1 * MIB
EXT = "permessage-deflate; client_max_window_bits"


def deflate(chunks):
    """Raw deflate of the concatenated chunks, without the 00 00 ff ff tail (RFC 7692)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = b"".join(c.compress(chunk) for chunk in chunks) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


BOMB = deflate(bytes(MIB) for _ in range(256))          # 256 MiB of zeros
NEAR_LIMIT = b"a" * (LIMIT - 1024)
NEAR = deflate([NEAR_LIMIT])


async def bomb(port, kind):
    c = await WsClient.connect(port, extensions=EXT)
    assert "permessage-deflate" in c.headers.get("sec-websocket-extensions", ""), c.headers
    try:
        if kind == "binary":
            await c.send(wf.frame(wf.OP_BINARY, BOMB, rsv1=True))
        elif kind == "text":
            await c.send(wf.frame(wf.OP_TEXT, BOMB, rsv1=True))
        else:  # fragmented: RSV1 on the first frame only
            pieces = [BOMB[i:i + 4096] for i in range(0, len(BOMB), 4096)]
            wire = b"".join(wf.frame(wf.OP_BINARY if i == 0 else wf.OP_CONT, p, fin=i == len(pieces) - 1,
                                     rsv1=i == 0, key=wf.FIXED_MASK) for i, p in enumerate(pieces))
            await c.send(wire)
    except (ConnectionResetError, BrokenPipeError):
        pass
    code, before, eof = await c.wait_close(15)
    c.close()
    return kind, code, eof


async def near_limit(port):
    c = await WsClient.connect(port, extensions=EXT)
    await c.send(wf.frame(wf.OP_BINARY, NEAR, rsv1=True))
    try:
        f = await c.recv_frame(timeout=15)
        parts, compressed = [f.payload], f.rsv1
        while not f.fin:
            f = await c.recv_frame(timeout=15)
            parts.append(f.payload)
    except (Closed, AttributeError):
        return "no echo"
    payload = b"".join(parts)
    data = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") if compressed else payload
    await c.send(wf.close_frame(1000))
    c.close()
    return "echoed" if data == NEAR_LIMIT else f"echo of {len(data)} bytes differs"


def test_compression_bombs(case):
    async def body(case):
        host = case.host("echo.wasm", "--max-payload-size", LIMIT)
        bystander = await case.bystander(host)
        kinds = ["binary", "text", "fragmented"] * 2 + ["binary", "fragmented"]

        async def one_round():
            bombs = await asyncio.gather(*(bomb(host.port, k) for k in kinds))
            return bombs, await near_limit(host.port)

        async def attack():
            return await repeat(one_round, max_rounds=200)

        timed_out, rounds = await case.attack(host, bystander, attack(), rss_bound_mib=24,
                                              p99_limit_ms=250, timeout=90)
        rounds = rounds or []
        results = [b for r, _ in rounds for b in r]
        nears = [n for _, n in rounds]
        case.note(f"{len(results)} bombs of 256 MiB -> {len(BOMB) // 1024} KiB, 8 at a time: close codes "
                  f"{sorted({str(code) for _, code, _ in results})}; near-limit message: {sorted(set(nears))}")
        case.check_common(host, timed_out=timed_out)
        bad = [(k, code, eof) for k, code, eof in results if code != 1009 or not eof]
        assert not bad, f"bombs not closed with 1009 and EOF: {bad[:5]}"
        assert all(n == "echoed" for n in nears), f"near-limit compressed message: {nears}"

    case.run(body, timeout=120)

"""Garbage on the wire.

Before the handshake: random bytes, a real TLS ClientHello on the plain port, an
HTTP/2 preface, HTTP/0.9, an SSH banner, NUL bytes, and near-miss upgrade requests.
Each must get a 4xx response (the exact one where the request is HTTP enough to
have one) or be closed without one, within the handshake timeout, and never crash
the host.

After the handshake: random bytes as frames, and handcrafted violations. Each must
be answered with a close frame carrying the violation's code (1002 protocol error,
1007 invalid data, 1009 too big), then EOF.
"""

import asyncio
import random
import ssl
import struct
import time

import frames as wf
from harness import LOCALHOST, WsClient, read_http_response, repeat

HANDSHAKE_TIMEOUT = 2  # also the close timeout
WITHIN = 2 * HANDSHAKE_TIMEOUT + 2.5
SEEDS = range(24)


def client_hello():
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def upgrade(authority, *, first_line="GET / HTTP/1.1", version="13", key=None):
    key = key or wf.new_key()
    return (f"{first_line}\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n").encode()


def before_handshake(authority):
    """name -> (bytes, accepted statuses; None = closed without a response)."""
    junk = {None, 400}
    cases = {f"random {n} bytes (seed {s})": (random.Random(s).randbytes(n), junk)
             for s, n in zip(SEEDS, [1, 7, 64, 512, 4096, 8192] * 4)}
    cases.update({
        "TLS ClientHello": (client_hello(), junk),
        "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", junk),
        "HTTP/0.9": (b"GET /\r\n", junk),
        "SSH banner": (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", junk),
        "PROXY protocol line": (b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n" + upgrade(authority), junk),
        "1 KiB of NUL": (bytes(1024), junk),
        "blank lines": (b"\r\n" * 200, junk),
        "8-bit bytes in the method": (b"G\xc3\x89T / HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
        "HTTP/1.0 upgrade": (upgrade(authority, first_line="GET / HTTP/1.0"), {400}),
        "POST upgrade": (upgrade(authority, first_line="POST / HTTP/1.1"), {405}),
        "version 8": (upgrade(authority, version="8"), {426}),
        "12-byte key": (upgrade(authority, key="AAAAAAAAAAAAAAAA"), {400}),
        "plain GET without static files": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
    })
    return cases


async def send_before(port, data):
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    started = time.monotonic()
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass
    status, eof = await read_http_response(reader, WITHIN + 3)
    writer.close()
    return status, eof, time.monotonic() - started


def handcrafted():
    """name -> (bytes after the handshake, expected close code)."""
    F, K = wf.frame, wf.FIXED_MASK
    return {
        "unmasked frame": (F(wf.OP_TEXT, b"hi", mask=False), 1002),
        "reserved opcode 3": (F(0x3, b"x"), 1002),
        "reserved control opcode 0xB": (F(0xB, b"x"), 1002),
        "RSV2 set": (F(wf.OP_TEXT, b"x", rsv2=True), 1002),
        "RSV1 without deflate": (F(wf.OP_TEXT, b"x", rsv1=True), 1002),
        "64-bit length, top bit set": (bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 63) + K, 1002),
        "126-byte ping": (F(wf.OP_PING, b"p" * 126), 1002),
        "fragmented ping": (F(wf.OP_PING, b"p", fin=False), 1002),
        "orphan continuation": (F(wf.OP_CONT, b"x"), 1002),
        "text inside a fragmented message": (F(wf.OP_TEXT, b"a", fin=False) + F(wf.OP_TEXT, b"b"), 1002),
        "invalid UTF-8": (F(wf.OP_TEXT, b"ok \xc3\x28"), 1007),
        "UTF-8 split surrogate": (F(wf.OP_TEXT, b"\xed\xa0\x80"), 1007),
        "close code 999": (wf.close_frame(999), 1002),
        "close code 1005": (wf.close_frame(1005), 1002),
        "1-byte close payload": (F(wf.OP_CLOSE, b"\x03"), 1002),
        "close reason not UTF-8": (wf.close_frame(1000, b"\xff"), 1007),
        "announced 1 TiB frame": (bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 40) + K, 1009),
        "TLS ClientHello": (client_hello(), 1002),
        "an HTTP request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1002),
    }


async def send_after(port, data, *, stream_seed=None):
    c = await WsClient.connect(port)
    started = time.monotonic()
    try:
        await c.send(data)
        if stream_seed is not None:  # keep sending random bytes until the server gives up
            rng = random.Random(stream_seed)
            for _ in range(16):
                f = None
                try:
                    f = await c.recv_frame(timeout=0.01)
                except asyncio.TimeoutError:
                    pass
                except wf.ProtocolViolation:
                    break
                if f is not None and f.opcode == wf.OP_CLOSE:
                    c.frames.appendleft(f)
                    break
                if f is None and c.eof:
                    break
                await c.send(rng.randbytes(4096))
    except ConnectionError:
        pass
    code, _, eof = await c.wait_close(WITHIN + 3)
    c.close()
    return code, eof, time.monotonic() - started


def test_garbage_before_handshake(case):
    async def body(case):
        host = case.host("echo.wasm", "--handshake-timeout", HANDSHAKE_TIMEOUT, "--close-timeout", HANDSHAKE_TIMEOUT)
        bystander = await case.bystander(host)
        cases = before_handshake(host.authority)

        async def one_round():
            results = await asyncio.gather(*(send_before(host.port, d) for d, _ in cases.values()))
            return dict(zip(cases, results))

        async def attack():
            return await repeat(one_round, min_seconds=3, max_rounds=200)

        timed_out, rounds = await case.attack(host, bystander, attack(), rss_bound_mib=16,
                                              p99_limit_ms=250, timeout=60)
        rounds = rounds or []
        statuses = {}
        for r in rounds:
            for name, (status, _, _) in r.items():
                statuses.setdefault(str(status), set()).add(name)
        case.note(f"{len(cases)} kinds x {len(rounds)} rounds; answers: "
                  + ", ".join(f"{s}: {len(n)} kinds" for s, n in sorted(statuses.items()))
                  + f" (closed without a response: {', '.join(sorted(statuses.get('None', [])))})")
        case.check_common(host, timed_out=timed_out)
        problems = set()
        for r in rounds:
            for name, (status, eof, elapsed) in r.items():
                allowed = cases[name][1]
                if status not in allowed:
                    problems.add(f"{name}: answered {status}, expected one of {sorted(map(str, allowed))}")
                elif not eof or elapsed > WITHIN:
                    problems.add(f"{name}: not closed within {WITHIN} s ({elapsed:.1f} s, eof {eof})")
        assert not problems, "; ".join(sorted(problems))

    case.run(body, timeout=90)


def test_garbage_after_handshake(case):
    async def body(case):
        host = case.host("echo.wasm", "--handshake-timeout", HANDSHAKE_TIMEOUT, "--close-timeout", HANDSHAKE_TIMEOUT)
        bystander = await case.bystander(host)
        crafted = handcrafted()

        async def one_round():
            jobs = [send_after(host.port, random.Random(s).randbytes(4096), stream_seed=1000 + s) for s in SEEDS]
            jobs += [send_after(host.port, data) for data, _ in crafted.values()]
            results = await asyncio.gather(*jobs)
            return results[:len(SEEDS)], dict(zip(crafted, results[len(SEEDS):]))

        async def attack():
            return await repeat(one_round, min_seconds=3, max_rounds=200)

        timed_out, rounds = await case.attack(host, bystander, attack(), rss_bound_mib=16,
                                              p99_limit_ms=250, timeout=60)
        rounds = rounds or []
        random_codes = sorted({str(code) for r, _ in rounds for code, _, _ in r})
        case.note(f"{len(SEEDS)} random streams + {len(crafted)} crafted violations x {len(rounds)} rounds; "
                  f"random streams closed with {random_codes}")
        case.check_common(host, timed_out=timed_out)
        problems = set()
        for randoms, named in rounds:
            for seed, (code, eof, elapsed) in zip(SEEDS, randoms):
                if code not in (1002, 1007, 1009):
                    problems.add(f"random seed {seed}: close code {code}")
                elif not eof:
                    problems.add(f"random seed {seed}: no EOF after the close frame")
            for name, (code, eof, elapsed) in named.items():
                if code != crafted[name][1]:
                    problems.add(f"{name}: close code {code}, expected {crafted[name][1]}")
                elif not eof or elapsed > WITHIN:
                    problems.add(f"{name}: not closed within {WITHIN} s ({elapsed:.1f} s)")
        assert not problems, "; ".join(sorted(problems))

    case.run(body, timeout=90)

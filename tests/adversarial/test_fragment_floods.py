"""1-byte fragment floods, with --max-payload-size 65536.

- A 50,000-byte message sent as 50,000 one-byte frames (a text or binary first frame,
  then continuations), with a ping between every 1,000 fragments: it must be echoed
  whole and every ping answered. 4 clients at once, 3 messages each.
- A message that never ends: one-byte continuations without end. It must be closed
  with 1009 once it passes 65,536 bytes (not before), with the partial message's
  memory bounded. 4 clients at once.
- A message that never grows: 300,000 empty continuation frames, then the last
  byte. Nothing exceeds the limit, so it must be echoed (handled, memory flat)."""

import asyncio

import frames as wf
from harness import Closed, WsClient, repeat

LIMIT = 65536
KEY = wf.FIXED_MASK


def one_byte_frames(data, opcode, ping_every=None):
    out = bytearray()
    pings = 0
    for i in range(len(data)):
        out += wf.frame(opcode if i == 0 else wf.OP_CONT, data[i:i + 1], fin=i == len(data) - 1, key=KEY)
        if ping_every and i % ping_every == ping_every - 1 and i != len(data) - 1:
            out += wf.frame(wf.OP_PING, f"p{i}".encode(), key=KEY)
            pings += 1
    return bytes(out), pings


async def fragmented_echo(port, opcode, rounds=3, size=50_000):
    c = await WsClient.connect(port)
    problems = []
    for r in range(rounds):
        data = bytes((65 + (i * 7 + r) % 26) for i in range(size))
        wire, pings = one_byte_frames(data, opcode, ping_every=1000)
        await c.send(wire)
        pongs = 0
        while True:
            f = await c.recv_frame(timeout=30)
            if f is None:
                problems.append(f"round {r}: EOF")
                return problems
            if f.opcode == wf.OP_PONG:
                pongs += 1
                continue
            if f.opcode == wf.OP_CLOSE:
                problems.append(f"round {r}: closed with {f.close_code()}")
                return problems
            got = f.payload
            while f is not None and not f.fin:
                f = await c.recv_frame(timeout=30)
                got += f.payload if f is not None else b""
            break
        if got != data:
            problems.append(f"round {r}: echo of {len(got)} bytes differs from the {size} sent")
        if pongs != pings:
            problems.append(f"round {r}: {pongs} pongs for {pings} pings")
    await c.send(wf.close_frame(1000))
    await c.wait_close(5)
    c.close()
    return problems


async def endless_fragments(port):
    """Returns (close code, data bytes sent when the close frame was seen)."""
    c = await WsClient.connect(port)
    batch = b"".join(wf.frame(wf.OP_CONT, b"z", fin=False, key=KEY) for _ in range(4096))
    await c.send(wf.frame(wf.OP_BINARY, b"z", fin=False, key=KEY))
    sent = 1
    code = None
    for _ in range(4 * LIMIT // 4096):  # at most 4 times the limit
        try:
            await c.send(batch)
        except (ConnectionResetError, BrokenPipeError):
            break
        sent += 4096
        try:
            f = await c.recv_frame(timeout=0.001)
        except asyncio.TimeoutError:
            continue
        if f is None or f.opcode == wf.OP_CLOSE:
            code = f and f.close_code()
            break
    if code is None:
        got, _, _ = await c.wait_close(5)
        code = got
    c.close()
    return code, sent


async def empty_continuations(port, count=300_000):
    c = await WsClient.connect(port)
    empty = wf.frame(wf.OP_CONT, b"", fin=False, key=KEY)
    await c.send(wf.frame(wf.OP_TEXT, b"head-", fin=False, key=KEY))
    batch = empty * 10_000
    for _ in range(count // 10_000):
        await c.send(batch)
    await c.send(wf.frame(wf.OP_CONT, b"tail", fin=True, key=KEY))
    try:
        _, got = await c.recv_message(timeout=30)
    except Closed as e:
        got = f"closed: {e.args[0]!r}".encode()
    await c.send(wf.close_frame(1000))
    c.close()
    return got


def test_one_byte_fragments_within_limit(case):
    async def body(case):
        host = case.host("echo.wasm", "--max-payload-size", LIMIT)
        bystander = await case.bystander(host)

        opcodes = [wf.OP_TEXT, wf.OP_BINARY, wf.OP_TEXT, wf.OP_BINARY]

        async def one_round():
            return await asyncio.gather(*(fragmented_echo(host.port, op) for op in opcodes))

        async def attack():
            return [r for rnd in await repeat(one_round, max_rounds=20) for r in rnd]

        timed_out, results = await case.attack(host, bystander, attack(), rss_bound_mib=16,
                                               p99_limit_ms=250, timeout=90)
        case.note(f"{len(results or [])} clients x 3 messages of 50,000 one-byte frames (+50 pings each), 4 at a time")
        case.check_common(host, timed_out=timed_out)
        problems = [p for r in results for p in r]
        assert not problems, "; ".join(problems)

    case.run(body, timeout=120)


def test_endless_fragmented_message(case):
    async def body(case):
        host = case.host("echo.wasm", "--max-payload-size", LIMIT)
        bystander = await case.bystander(host)

        async def one_round():
            endless, empty = await asyncio.gather(
                asyncio.gather(*(endless_fragments(host.port) for _ in range(4))),
                empty_continuations(host.port))
            return endless, empty

        async def attack():
            return await repeat(one_round, max_rounds=50)

        timed_out, rounds = await case.attack(host, bystander, attack(), rss_bound_mib=16,
                                              p99_limit_ms=250, timeout=90)
        rounds = rounds or []
        endless = [e for r in rounds for e in r[0]]
        empties = [r[1] for r in rounds]
        codes = sorted({code for code, _ in endless}, key=str)
        sent = [s for _, s in endless]
        case.note(f"{len(endless)} endless messages: close {codes} after {min(sent, default=0)}-{max(sent, default=0)} B; "
                  f"{len(empties)} x 300,000 empty continuations: {sum(e == b'head-tail' for e in empties)} echoed")
        case.check_common(host, timed_out=timed_out)
        for code, n in endless:
            assert code == 1009, f"endless fragmented message: close code {code} after {n} bytes"
            assert n > LIMIT, f"closed with 1009 after only {n} bytes (limit {LIMIT})"
        for empty in empties:
            assert empty == b"head-tail", f"300,000 empty continuations: got {empty[:80]!r}"

    case.run(body, timeout=120)

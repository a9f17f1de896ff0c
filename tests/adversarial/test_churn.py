"""Connection churn: thousands of connect / handshake / close cycles, mixed with
abrupt disconnects (a TCP reset mid-frame, a FIN mid-frame, a reset mid-handshake),
checked for leaks. A warm-up round of 2,000 cycles fills the allocator's caches;
then 10,000 more cycles of the same mix must leave RSS where the warm-up left it
(within 2 MiB, i.e. about 200 bytes per cycle), and the bystander must not notice.

The bound is on the growth from after the warm-up to after the measured rounds (not
from the start), which is what a leak changes."""

import asyncio
import time

import frames as wf
from harness import LOCALHOST, RawClient, WsClient

WORKERS = 16
WARMUP = 2000
MEASURED = 10000
LEAK_BOUND_MIB = 2


async def cycle(port, i):
    """One connection's life; returns a problem or None."""
    kind = i % 10
    if kind < 6:  # clean: handshake, one echo, closing handshake
        c = await WsClient.connect(port)
        msg = f"churn {i}".encode()
        await c.send(wf.frame(wf.OP_TEXT, msg))
        _, got = await c.recv_message(timeout=10)
        await c.send(wf.close_frame(1000))
        code, _, eof = await c.wait_close(10)
        c.close()
        if got != msg:
            return f"cycle {i}: echo {got!r}"
        if code != 1000 or not eof:
            return f"cycle {i}: close {code}, eof {eof}"
        return None
    if kind < 8:  # reset mid-frame
        c = await WsClient.connect(port)
        await c.send(wf.frame(wf.OP_BINARY, b"x" * 1000)[:500])
        c.abort()
        return None
    if kind == 8:  # FIN mid-frame, no close frame
        c = await WsClient.connect(port)
        await c.send(wf.frame(wf.OP_TEXT, b"y" * 300)[:100])
        c.writer.write_eof()
        code, _, eof = await c.wait_close(10)
        c.close()
        return None if eof else f"cycle {i}: no EOF after a FIN mid-frame"
    # reset mid-handshake
    raw = await RawClient.connect(port, handshake=False)
    request, _ = wf.handshake_request(f"{LOCALHOST}:{port}")
    raw.sock.send(request[:len(request) // 2])
    raw.abort()
    return None


async def churn(port, count, start):
    problems = []
    queue = iter(range(start, start + count))

    async def worker():
        for i in queue:
            try:
                p = await cycle(port, i)
            except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, AssertionError) as e:
                p = f"cycle {i}: {e!r}"
            if p:
                problems.append(p)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return problems


def test_connection_churn(case):
    async def body(case):
        host = case.host("echo.wasm")
        bystander = await case.bystander(host)
        rss_start = host.rss_kib()
        warm = await churn(host.port, WARMUP, 0)
        warm_growth = host.rss_kib() - rss_start
        assert not warm, f"warm-up: {warm[:5]}"
        case.row["growth_kind"] = "after"

        async def attack():
            started = time.monotonic()
            problems = await churn(host.port, MEASURED, WARMUP)
            return problems, time.monotonic() - started

        timed_out, result = await case.attack(host, bystander, attack(), rss_bound_mib=LEAK_BOUND_MIB,
                                              p99_limit_ms=250, timeout=150)
        problems, took = result or ([], 0)
        case.note(f"{WARMUP} warm-up + {MEASURED} measured cycles ({WORKERS} at a time, 60% clean, "
                  f"20% reset mid-frame, 10% FIN mid-frame, 10% reset mid-handshake) in {took:.1f} s; "
                  f"the warm-up grew RSS by {warm_growth / 1024:.1f} MiB")
        case.check_common(host, timed_out=timed_out)
        assert not problems, f"{len(problems)} failed cycles: {problems[:5]}"

    case.run(body, timeout=240)

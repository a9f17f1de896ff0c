"""Ping floods from clients that never read: 8 clients each send 125-byte pings as
fast as the kernel takes them and never read a pong. The server must not buffer
pongs without bound: it must stop reading (the clients' writes stall) or drop
them, with its RSS bounded. A client stalled that way looks silent to the server,
so the idle check (--idle-timeout 2, close timeout 2) must then drop it too."""

import asyncio
import time

import frames as wf
from harness import MIB, Closed, RawClient, wait_until

FLOODERS = 8
IDLE = 2
CLOSE_TIMEOUT = 2
STALL = 1.5                    # s without a byte accepted = the server stopped reading
MAX_SECONDS = 10               # flooding for this long without a stall or a drop fails
DROPPED_WITHIN = 2 * IDLE + CLOSE_TIMEOUT + 6  # s after the stall (the stall is seen STALL s late)


async def flood(port):
    """Floods until the server stops reading (a stall), drops the connection (reset or
    FIN), or MAX_SECONDS pass with the server still taking pings."""
    c = await RawClient.connect(port)
    batch = b"".join(wf.frame(wf.OP_PING, b"p" * 125, key=wf.FIXED_MASK) for _ in range(512))
    total, stalled, gone = 0, False, False
    started = time.monotonic()
    while time.monotonic() - started < MAX_SECONDS:
        try:
            n, stalled = await c.send_bounded(batch, STALL)
        except Closed:
            gone = True
            break
        total += n
        if stalled:
            break
        if c.peer_gone():
            gone = True
            break
    took = time.monotonic() - started
    stall_time = time.monotonic()
    dropped = gone or await wait_until(c.peer_gone, DROPPED_WITHIN)
    dropped_after = time.monotonic() - stall_time
    c.abort()
    return {"bytes": total, "stalled": stalled, "gone": gone, "dropped": bool(dropped),
            "dropped_after": dropped_after, "seconds": took}


def test_ping_flood_never_reading(case):
    async def body(case):
        host = case.host("echo.wasm", "--idle-timeout", IDLE, "--handshake-timeout", CLOSE_TIMEOUT)
        bystander = await case.bystander(host)

        async def attack():
            return await asyncio.gather(*(flood(host.port) for _ in range(FLOODERS)))

        timed_out, results = await case.attack(host, bystander, attack(), rss_bound_mib=24,
                                               p99_limit_ms=250, timeout=60)
        results = results or []
        if results:
            case.note(f"{FLOODERS} flooders: {min(r['bytes'] for r in results) / MIB:.1f}-"
                      f"{max(r['bytes'] for r in results) / MIB:.1f} MiB of pings taken before a stall or drop, "
                      f"{sum(r['stalled'] for r in results)} stalled, {sum(r['gone'] for r in results)} dropped while "
                      f"flooding, {sum(r['dropped'] for r in results)} dropped in all (at most "
                      f"{max(r['seconds'] + r['dropped_after'] for r in results):.1f} s from the start)")
        case.check_common(host, timed_out=timed_out)
        for i, r in enumerate(results):
            assert r["stalled"] or r["gone"], (
                f"flooder {i}: the server kept reading for {MAX_SECONDS} s ({r['bytes'] / MIB:.0f} MiB "
                f"of pings, pongs unread) without dropping the client")
            assert r["dropped"], (
                f"flooder {i}: stalled but never dropped within {DROPPED_WITHIN} s (idle timeout {IDLE} s)")

    case.run(body, timeout=90)

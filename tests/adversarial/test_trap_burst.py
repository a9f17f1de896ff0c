"""Trap bursts (chaos.wasm): 50 connections send "panic" at the same moment. Every
one of them must be closed with 1011, within 10 s, and the bystander (echoing
through the same plugin: chaos.wasm echoes ordinary text) must see every round trip
under 1 s while the plugin crashes and restarts 50 times. The burst is repeated
with fresh connections (up to 12 times, 0.25 s apart, until 3 s have passed), so that the
bystander has enough samples and back-off carried across bursts shows too.

A crash-loop back-off that grows with consecutive crashes (100 ms, 200 ms, ... up to
10 s) turns this burst into minutes of stalled events for every connection; this
test then fails by its deadlines instead of hanging."""

import asyncio
import time

import pytest

import frames as wf
from harness import WsClient

CONNECTIONS = 50
CLOSED_WITHIN = 10.0  # s after the burst
BYSTANDER_MAX_MS = 1000
BURSTS = 12           # bursts one after another, 0.25 s apart, until 3 s have passed


async def wait_1011(client, deadline):
    try:
        code, _, _ = await client.wait_close(max(0.001, deadline - time.monotonic()), answer=True)
    except ConnectionError:
        code = None
    return code, client.close_at or time.monotonic()


async def burst(port):
    """50 fresh connections, open in the plugin, then "panic" from all at once.
    Returns [(close code, seconds from the burst to the close frame)]."""
    clients = [await WsClient.connect(port) for _ in range(CONNECTIONS)]
    try:
        # Every connection is open in the plugin once it has echoed something.
        for c in clients:
            await c.send(wf.frame(wf.OP_TEXT, b"hello"))
        for c in clients:
            _, got = await c.recv_message(timeout=CLOSED_WITHIN)
            assert got == b"hello"
        for c in clients:  # all buffered first, then flushed together
            c.writer.write(wf.frame(wf.OP_TEXT, b"panic"))
        start = time.monotonic()
        await asyncio.gather(*(c.writer.drain() for c in clients))
        results = await asyncio.gather(*(wait_1011(c, start + CLOSED_WITHIN) for c in clients))
        return [(code, t - start) for code, t in results]
    finally:
        for c in clients:
            c.close()


# Stateless, the traps happen on the connections' own threads, each costing that
# thread's instance, and must not add up to a back-off for the others either.
@pytest.mark.parametrize("flags", [(), ("--stateless",)], ids=["shared", "stateless"])
def test_trap_burst(case, flags):
    async def body(case):
        host = case.host("chaos.wasm", *flags)
        bystander = await case.bystander(host)
        results = []

        async def attack():
            started = time.monotonic()
            for _ in range(BURSTS):
                results.extend(await burst(host.port))
                if time.monotonic() - started > 3:
                    break
                await asyncio.sleep(0.25)  # pacing between bursts

        timed_out, _ = await case.attack(host, bystander, attack(), rss_bound_mib=24,
                                         p99_limit_ms=BYSTANDER_MAX_MS, timeout=CLOSED_WITHIN + 10)
        got_1011 = [t for code, t in results if code == 1011]
        bursts = -(-len(results) // CONNECTIONS)
        case.note(f"{bursts} bursts of {CONNECTIONS}: {len(got_1011)}/{len(results)} closed with 1011"
                  + (f" after {min(got_1011):.2f}-{max(got_1011):.2f} s" if got_1011 else ""))
        case.check_common(host, timed_out=timed_out)
        assert case.row["max"] < BYSTANDER_MAX_MS, (
            f"bystander max round trip {case.row['max']:.0f} ms >= {BYSTANDER_MAX_MS} ms during the bursts")
        others = [code for code, _ in results if code != 1011]
        assert not others, (f"{len(others)} of {len(results)} not closed with 1011 within {CLOSED_WITHIN} s: "
                            f"{sorted(map(str, others))[:10]}")

    case.run(body, timeout=60)

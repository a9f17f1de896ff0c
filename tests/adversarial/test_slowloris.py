"""Slowloris: many connections send a valid upgrade request one byte at a time, far
slower than the handshake timeout. Each must be cut at the timeout (--handshake-timeout
2), without a 101, while a normal client is served as usual."""

import asyncio
import time

import frames as wf
from harness import LOCALHOST

CONNECTIONS = 300
BYTE_EVERY = 0.2  # s: the ~170-byte request would take ~35 s
HANDSHAKE_TIMEOUT = 2
CUT_WINDOW = (HANDSHAKE_TIMEOUT - 0.5, HANDSHAKE_TIMEOUT + 2.0)  # s after connect


async def slow_client(port):
    request, _ = wf.handshake_request(f"{LOCALHOST}:{port}")
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    started = time.monotonic()
    got = b""

    async def trickle():
        for i in range(len(request)):
            writer.write(request[i:i + 1])
            await writer.drain()
            await asyncio.sleep(BYTE_EVERY)  # pacing the attack, not synchronising

    sender = asyncio.create_task(trickle())
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            if not chunk:
                break
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except asyncio.TimeoutError:
        return None, got  # never cut
    finally:
        sender.cancel()
        writer.close()
    return time.monotonic() - started, got


def test_slowloris_handshakes(case):
    async def body(case):
        host = case.host("echo.wasm", "--handshake-timeout", HANDSHAKE_TIMEOUT)
        bystander = await case.bystander(host)

        async def attack():
            return await asyncio.gather(*(slow_client(host.port) for _ in range(CONNECTIONS)))

        timed_out, results = await case.attack(host, bystander, attack(), rss_bound_mib=16,
                                               p99_limit_ms=250, timeout=30)
        cut = [t for t, _ in results if t is not None]
        case.note(f"{CONNECTIONS} conns cut after {min(cut):.2f}-{max(cut):.2f} s" if cut else "none cut")
        case.check_common(host, timed_out=timed_out)
        never = sum(1 for t, _ in results if t is None)
        assert never == 0, f"{never} of {CONNECTIONS} slow handshakes were never cut"
        answered = [got[:40] for _, got in results if got]
        assert not answered, f"{len(answered)} slow handshakes got a response: {answered[:3]}"
        early = [t for t in cut if t < CUT_WINDOW[0]]
        late = [t for t in cut if t > CUT_WINDOW[1]]
        assert not early and not late, (
            f"cut outside {CUT_WINDOW} s: {len(early)} early (min {min(cut):.2f}), "
            f"{len(late)} late (max {max(cut):.2f})")

    case.run(body, timeout=60)

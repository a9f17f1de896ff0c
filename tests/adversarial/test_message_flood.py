"""Continuous senders (echo.wasm): 8 clients each send small text messages without
pause for 4 s, keeping up to 500 unanswered, and read their echoes as they come.
Every message is valid; only the rate is hostile.

- Nobody starves: the bystander's p99 stays under 250 ms, and every flooder gets a
  fair share (the slowest at least a quarter of the fastest's echoes). A connection
  whose input never runs dry must not hold its thread or the plugin's queue.
- Nothing is lost and nobody is dropped: each flooder reads every echo, in order,
  and is never closed (it reads promptly; it is not a slow reader).
- Memory stays bounded while it lasts.
"""

import asyncio
import time

import frames as wf
from harness import Closed, WsClient

FLOODERS = 8
SECONDS = 4.0
WINDOW = 500          # unanswered messages per flooder at most
BATCH = 50            # messages per write
DRAIN_WITHIN = 15.0   # s after sending stops for the last echoes


def message(flooder, seq):
    return f"flood {flooder} {seq}".encode()


async def flood(port, flooder):
    """Sends for SECONDS, then waits for every echo. Returns (sent, echoed in order,
    problem or None)."""
    client = await WsClient.connect(port)
    sent = echoed = 0
    room = asyncio.Event()  # the window has room again
    room.set()
    sent_more = asyncio.Event()  # a batch went out, or sending ended
    problem = None
    stop_at = time.monotonic() + SECONDS

    async def send():
        nonlocal sent, problem
        try:
            while time.monotonic() < stop_at and problem is None:
                if sent - echoed + BATCH > WINDOW:
                    room.clear()
                    await room.wait()
                    continue
                batch = b"".join(wf.frame(wf.OP_TEXT, message(flooder, sent + i), key=wf.FIXED_MASK)
                                 for i in range(BATCH))
                await client.send(batch)
                sent += BATCH
                sent_more.set()
        except OSError as e:  # the server dropped us mid-write (the reader may say why)
            problem = problem or f"send failed after {sent} messages: {e!r}"
        finally:
            sent_more.set()

    async def read():
        nonlocal echoed, problem
        sending = asyncio.ensure_future(send())
        try:
            while True:
                if echoed == sent:  # nothing due: wait for more to be sent, or the end
                    if sending.done():
                        break
                    sent_more.clear()
                    await sent_more.wait()
                    continue
                opcode, data = await client.recv_message(timeout=DRAIN_WITHIN)
                if opcode != wf.OP_TEXT or data != message(flooder, echoed):
                    problem = f"echo {echoed} was {data[:40]!r}"
                    break
                echoed += 1
                if sent - echoed + BATCH <= WINDOW:
                    room.set()
        except Closed as e:
            f = e.args[0]
            problem = f"closed after {echoed} echoes: {'close ' + str(f.close_code()) if f else 'EOF'}"
        except asyncio.TimeoutError:
            problem = f"no echo after {echoed} of {sent}"
        except Exception as e:  # a malformed frame, a reset while answering a ping
            problem = f"reading failed after {echoed} echoes: {e!r}"
        finally:
            # Any problem stops the sender: it looks at `problem` whenever it wakes.
            room.set()
            await asyncio.gather(sending, return_exceptions=True)
        return sent, echoed, problem

    try:
        return await read()
    finally:
        client.close()


def test_continuous_senders(case):
    async def body(case):
        host = case.host("echo.wasm")
        bystander = await case.bystander(host)

        async def attack():
            return await asyncio.gather(*(flood(host.port, i) for i in range(FLOODERS)))

        timed_out, results = await case.attack(host, bystander, attack(), rss_bound_mib=32,
                                               p99_limit_ms=250, timeout=SECONDS + DRAIN_WITHIN + 20)
        results = results or []
        if results:
            counts = [echoed for _, echoed, _ in results]
            case.note(f"{FLOODERS} flooders: {sum(counts):,} echoes in {SECONDS:g} s and the drain, "
                      f"{min(counts):,} to {max(counts):,} each")
        case.check_common(host, timed_out=timed_out)
        # A flooder without a problem got every echo, in order (its reader checks each).
        for i, (sent, echoed, problem) in enumerate(results):
            assert problem is None, f"flooder {i}: {problem}"
        counts = [echoed for _, echoed, _ in results]
        assert min(counts) >= 1000, f"a flooder got almost nothing through: {counts}"
        assert min(counts) * 4 >= max(counts), f"the flooders' shares are unfair: {counts}"

    case.run(body, timeout=90)

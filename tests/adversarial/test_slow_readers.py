"""Slow readers beside fast ones (broadcast.wasm, --max-messages-buffering 100).

One sender sends 8,000 messages of 1 KiB in bursts of 200 (one write per burst,
50 ms apart); four
fast readers read everything as it comes; four clients never read (receive buffer
4 KiB, so that their backlog builds on the server rather than in their kernel).

- Every fast reader must get every message, in order, and never be dropped (a
  prompt reader must not be taken for a slow one because messages came in a burst).
- Every non-reader must be dropped once its backlog passes the bound, with a close
  frame 1008 after the messages it was sent. The close frame can only be seen by
  reading, so the non-readers read everything after the sender is done: what they
  must find is a prefix of the messages, then close 1008, then EOF (not a bare TCP
  close, and not all N messages, which would mean they were never dropped).

The bystander runs in broadcast mode: its messages go through the same fan-out, and
its latency is one-way, from its sender to its receiver, both of which read.
"""

import asyncio
import time

import frames as wf
from harness import Closed, RawClient, WsClient

N = 8000
SIZE = 1024
BURST = 200
FAST, SLOW = 4, 4
BOUND = 100


def message(i):
    head = f"m {i} ".encode()
    return head + b"." * (SIZE - len(head))


async def fast_reader(client, ready):
    """Reads until message N-1; returns (messages in order, problem or None)."""
    expected = 0
    try:
        while expected < N:
            opcode, data = await client.recv_message(timeout=30)
            if data == b"sync":
                ready.set()
                continue
            if not data.startswith(b"m "):
                continue  # the bystander's messages
            seq = int(data.split(b" ", 2)[1])
            if seq != expected:
                return expected, f"got message {seq} when {expected} was due"
            expected += 1
    except Closed as e:
        f = e.args[0]
        return expected, f"dropped after {expected} messages: {'close ' + str(f.close_code()) if f else 'EOF'}"
    except asyncio.TimeoutError:
        return expected, f"stuck after {expected} messages"
    return expected, None


def test_slow_readers_beside_fast_ones(case):
    async def body(case):
        host = case.host("broadcast.wasm", "--max-messages-buffering", BOUND)
        bystander = await case.bystander(host, mode="broadcast")
        slow = [await RawClient.connect(host.port, rcvbuf=4096) for _ in range(SLOW)]
        fast = [await WsClient.connect(host.port) for _ in range(FAST)]
        sender = await WsClient.connect(host.port)

        async def drain_sender():  # it receives the bystander's messages; it reads them
            while True:
                try:
                    await sender.recv_message(timeout=3600)
                except (Closed, asyncio.TimeoutError, ConnectionError):
                    return

        drainer = asyncio.create_task(drain_sender())
        readies = [asyncio.Event() for _ in fast]
        readers = [asyncio.create_task(fast_reader(c, r)) for c, r in zip(fast, readies)]
        # Everyone is open and seen by the plugin once a broadcast reaches every fast reader.
        await sender.send(wf.frame(wf.OP_TEXT, b"sync"))
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 10)

        async def attack():
            started = time.monotonic()
            for start in range(0, N, BURST):
                await sender.send(b"".join(wf.frame(wf.OP_TEXT, message(i), key=wf.FIXED_MASK)
                                           for i in range(start, min(N, start + BURST))))
                await asyncio.sleep(0.05)  # pacing between bursts
            sent_in = time.monotonic() - started
            results = await asyncio.gather(*readers)
            done_in = time.monotonic() - started
            # After the fact: what the non-readers were sent.
            seen = await asyncio.gather(*(c.read_all(timeout=10) for c in slow))
            return sent_in, done_in, results, seen

        timed_out, result = await case.attack(host, bystander, attack(), rss_bound_mib=32,
                                              p99_limit_ms=250, timeout=120)
        drainer.cancel()
        for c in slow:
            c.close()
        for c in fast + [sender]:
            c.close()
        if result is None:
            case.check_common(host, timed_out=timed_out)
            return
        sent_in, took, results, seen = result
        slow_summary = []
        for got, eof in seen:
            data = [f for f in got if f.opcode == wf.OP_TEXT and f.payload.startswith(b"m ")]
            closes = [f.close_code() for f in got if f.opcode == wf.OP_CLOSE]
            slow_summary.append((len(data), closes, eof))
        case.note(f"{N} x {SIZE} B sent in {sent_in:.1f} s, fast readers done after {took:.1f} s; "
                  f"fast got {[n for n, _ in results]}; non-readers got "
                  + ", ".join(f"{n} msgs then {('close ' + str(c[0])) if c else 'no close frame'}{' + EOF' if e else ''}"
                              for n, c, e in slow_summary))
        case.check_common(host, timed_out=timed_out)
        problems = [f"fast reader {i}: {p}" for i, (_, p) in enumerate(results) if p]
        for i, (n, closes, eof) in enumerate(slow_summary):
            if n >= N:
                problems.append(f"non-reader {i}: got all {N} messages (never dropped)")
            elif not closes:
                problems.append(f"non-reader {i}: dropped after {n} messages without a close frame (bare TCP close)")
            elif closes[0] != 1008:
                problems.append(f"non-reader {i}: close code {closes[0]}, expected 1008")
            if not eof:
                problems.append(f"non-reader {i}: connection not closed")
        assert not problems, "; ".join(problems)

    case.run(body, timeout=150)

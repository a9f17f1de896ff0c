"""Half-open connections: complete the handshake, then never send, never read and
never close. Half of them stop in the middle of a frame (a header announcing 100
bytes, 10 of them sent). The idle check (--idle-timeout 1) must ping each one, then
close it with 1001 and drop it: ping after ~1 s, close frame after ~2 s, TCP
close after the closing handshake times out (--close-timeout 2).

The clients do not read while this happens: the ping's arrival is seen with FIONREAD
and the server's FIN in the socket's TCP state; what was sent is read only after."""

import asyncio
import time

import frames as wf
from harness import RawClient, wait_until

CONNECTIONS = 200
IDLE = 1
CLOSE_TIMEOUT = 2
PING_BY = IDLE + 1.5           # s after the last byte sent
DROPPED_BY = 2 * IDLE + CLOSE_TIMEOUT + 2.5


def test_half_open_connections(case):
    async def body(case):
        host = case.host("echo.wasm", "--idle-timeout", IDLE, "--close-timeout", CLOSE_TIMEOUT)
        bystander = await case.bystander(host)
        clients, quiet_since, pinged_at, dropped_at = [], [], {}, {}

        async def attack():
            for i in range(CONNECTIONS):
                c = await RawClient.connect(host.port)
                if i % 2:
                    # Mid-frame: a masked text frame header for 100 bytes, then 10 of them.
                    c.sock.send(wf.frame(wf.OP_TEXT, b"x" * 100)[:2 + 4 + 10])
                clients.append(c)
                quiet_since.append(time.monotonic())

            def progress():
                now = time.monotonic()
                for i, c in enumerate(clients):
                    if i not in pinged_at and c.bytes_waiting() > 0:
                        pinged_at[i] = now - quiet_since[i]
                    if i not in dropped_at and c.peer_gone():
                        dropped_at[i] = now - quiet_since[i]
                return len(dropped_at) == len(clients)

            await wait_until(progress, DROPPED_BY + 2, interval=0.05)
            return True

        timed_out, _ = await case.attack(host, bystander, attack(), rss_bound_mib=16,
                                         p99_limit_ms=250, timeout=40)
        # Now (after the fact) read what each silent client had been sent.
        seen = await asyncio.gather(*(c.read_all(timeout=3) for c in clients))
        for c in clients:
            c.close()
        if dropped_at:
            case.note(f"{CONNECTIONS} silent conns: first data after {min(pinged_at.values(), default=0):.2f}-"
                      f"{max(pinged_at.values(), default=0):.2f} s, dropped after {min(dropped_at.values()):.2f}-"
                      f"{max(dropped_at.values()):.2f} s")
        case.check_common(host, timed_out=timed_out)

        never = [i for i in range(len(clients)) if i not in dropped_at]
        assert not never, f"{len(never)} of {len(clients)} half-open connections were never dropped"
        late = {i: t for i, t in dropped_at.items() if t > DROPPED_BY}
        assert not late, f"{len(late)} dropped later than {DROPPED_BY} s: max {max(late.values()):.2f} s"
        early = {i: t for i, t in pinged_at.items() if t < IDLE - 0.2 or t > PING_BY}
        assert not early, f"{len(early)} first heard from outside [{IDLE - 0.2}, {PING_BY}] s: {sorted(early.values())[:5]}"
        for i, (got, eof) in enumerate(seen):
            ops = [f.opcode for f in got]
            assert got and got[0].opcode == wf.OP_PING, f"client {i}: no ping first: {got}"
            closes = [f for f in got if f.opcode == wf.OP_CLOSE]
            assert closes and closes[0].close_code() == 1001, f"client {i}: frames {ops}, no close 1001"
            assert eof, f"client {i}: no EOF after the close frame"

    case.run(body, timeout=60)

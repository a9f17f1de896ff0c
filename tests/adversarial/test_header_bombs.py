"""Header bombs: huge header lines, very many headers, a request head that never
ends, bytes that are not allowed in a header. Each must get 431 (or 400 for
malformed bytes) and be closed; the two requests just inside the limits (64
headers, an 8 KiB head) must still be accepted. Every bomb runs on 10 connections at
once, so that a server buffering what it is sent would show it in RSS."""

import asyncio
import time

import frames as wf
from harness import LOCALHOST, read_http_response

COPIES = 10
ROUNDS, MIN_SECONDS = 200, 3.0  # repeat the bombs until 3 s passed (at most 200 rounds)
CLOSE_TIMEOUT = 2
CLOSED_WITHIN = CLOSE_TIMEOUT + 3  # s after the request was sent


def base_lines(authority):
    request, _ = wf.handshake_request(authority)
    return request[:-2].decode().split("\r\n")[:-1]  # the lines, without the blank line


def request_of(lines):
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def padded_to(authority, total):
    """A valid upgrade request whose head is exactly `total` bytes."""
    lines = base_lines(authority)
    filler = "X-Pad: "
    size = len(request_of(lines + [filler]))
    return request_of(lines + [filler + "p" * (total - size)])


def bombs(authority):
    lines = base_lines(authority)
    return {
        # name: (request bytes or a generator of chunks, expected status)
        "64 KiB header line": (request_of(lines + ["X-Bomb: " + "a" * 65536]), 431),
        "1 MiB line, no CRLF, streamed": ((lines[0] + "\r\nX-Bomb: ").encode() + b"b" * (1 << 20), 431),
        "200 small headers": (request_of(lines + [f"X-H{i}: v" for i in range(200)]), 431),
        "65 headers": (request_of(lines + [f"X-H{i}: v" for i in range(65 - len(lines) + 1)]), 431),
        "10,000 headers 'a:b'": (request_of(lines + ["a:b"] * 10000), 431),
        "8193-byte head": (padded_to(authority, 8193), 431),
        "NUL in a header name": (request_of(lines + ["X-N\x00ul: v"]), 400),
        "space in a header name": (request_of(lines + ["Bad Header: v"]), 400),
        "non-UTF-8 header value": (request_of(lines).replace(b"\r\n\r\n", b"\r\nX-V: \xff\xfe\xfd\r\n\r\n"), 400),
        # Just inside the limits: must work.
        "64 headers (limit)": (request_of(lines + [f"X-H{i}: v" for i in range(64 - len(lines) + 1)]), 101),
        "8192-byte head (limit)": (padded_to(authority, 8192), 101),
    }


async def bomb(port, data, expected):
    reader, writer = await asyncio.open_connection(LOCALHOST, port)
    started = time.monotonic()

    async def send():
        try:
            for i in range(0, len(data), 16384):
                writer.write(data[i:i + 16384])
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass

    sender = asyncio.create_task(send())
    if expected == 101:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = wf.parse_response_head(head[:-4])[0]
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            status = None
        writer.write(wf.close_frame(1000))
        eof, elapsed = True, time.monotonic() - started
    else:
        status, eof = await read_http_response(reader, CLOSED_WITHIN + 5)
        elapsed = time.monotonic() - started
    sender.cancel()
    writer.close()
    return status, eof, elapsed


def test_header_bombs(case):
    async def body(case):
        host = case.host("echo.wasm", "--handshake-timeout", CLOSE_TIMEOUT, "--close-timeout", CLOSE_TIMEOUT)
        bystander = await case.bystander(host)
        cases = bombs(host.authority)

        async def attack():
            out = []
            started = time.monotonic()
            for _ in range(ROUNDS):
                jobs = [(name, bomb(host.port, data, expected)) for name, (data, expected) in cases.items()
                        for _ in range(COPIES)]
                results = await asyncio.gather(*(j for _, j in jobs))
                out += [(name, r) for (name, _), r in zip(jobs, results)]
                if time.monotonic() - started > MIN_SECONDS:
                    break
            return out

        timed_out, results = await case.attack(host, bystander, attack(), rss_bound_mib=16,
                                               p99_limit_ms=250, timeout=40)
        worst = max((e for _, (_, _, e) in results or []), default=0)
        case.note(f"{len(cases)} bombs x {COPIES} x {len(results or []) // (len(cases) * COPIES)} rounds; slowest closed after {worst:.2f} s")
        case.check_common(host, timed_out=timed_out)
        problems = []
        for name, (status, eof, elapsed) in results:
            expected = cases[name][1]
            if status != expected:
                problems.append(f"{name}: status {status}, expected {expected}")
            elif expected != 101 and not eof:
                problems.append(f"{name}: not closed after the {status}")
            elif expected != 101 and elapsed > CLOSED_WITHIN:
                problems.append(f"{name}: closed after {elapsed:.2f} s (> {CLOSED_WITHIN})")
        assert not problems, "; ".join(sorted(set(problems)))

    case.run(body, timeout=60)

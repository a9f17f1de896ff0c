"""The adversarial suite's harness: start the host, read its RSS, run the bystander,
speak raw WebSocket over asyncio (streams for clients that read, bare non-blocking
sockets for clients that must never read), and record each case's numbers.

Environment:
  WSPLUG_HOST        the host binary            [target/debug/host]
  WSPLUG_PLUGIN_DIR  the built plugins          [target/wasm32-wasip2/release]
  ADVERSARIAL_REPORT where the table goes       [target/adversarial-report.md]
  WSPLUG_HOST_FLAGS  more flags for every host, space-separated (e.g. --stateless) []
"""

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import frames as wf

ROOT = Path(__file__).resolve().parents[2]
HOST_BIN = Path(os.environ.get("WSPLUG_HOST", ROOT / "target/debug/host"))
PLUGIN_DIR = Path(os.environ.get("WSPLUG_PLUGIN_DIR", ROOT / "target/wasm32-wasip2/release"))
REPORT_PATH = Path(os.environ.get("ADVERSARIAL_REPORT", ROOT / "target/adversarial-report.md"))
HOST_FLAGS = os.environ.get("WSPLUG_HOST_FLAGS", "").split()
BYSTANDER = Path(__file__).resolve().parent / "bystander.py"
LOCALHOST = "127.0.0.1"
MIB = 1024 * 1024

TCP_STATES = {1: "ESTABLISHED", 7: "CLOSE", 8: "CLOSE_WAIT", 5: "FIN_WAIT2", 4: "FIN_WAIT1", 9: "LAST_ACK", 6: "TIME_WAIT"}


# --------------------------------------------------------------------------------
# The host process
# --------------------------------------------------------------------------------

class Host:
    """One host process on 127.0.0.1 with a free port; its log goes to a file."""

    def __init__(self, plugin, flags, workdir, cache_dir):
        self.plugin = PLUGIN_DIR / plugin
        self.flags = [str(f) for f in flags]
        self.workdir = Path(workdir)
        self.cache_dir = cache_dir
        self.log_path = self.workdir / "host.log"
        self.proc = None
        self.port = None

    def start(self, timeout=60):
        assert HOST_BIN.exists(), f"no host binary at {HOST_BIN}"
        assert self.plugin.exists(), f"no plugin at {self.plugin}"
        # --watch false: the plugins may be rebuilt while the suite runs; a reload
        # mid-case would be a different test. A short grace keeps teardown quick.
        argv = [str(HOST_BIN), "--listen", f"{LOCALHOST}:0", "--plugin", str(self.plugin),
                "--cache-dir", str(self.cache_dir), "--watch", "false", "--shutdown-grace", "1",
                *self.flags, *HOST_FLAGS]
        self.argv = argv
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                m = re.search(rb"wsplug listening on ws://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    break
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        if self.port is None:
            self.kill()
            raise AssertionError(f"host did not start ({' '.join(argv)}); last stdout {line!r}; log:\n{self.log_tail()}")
        # Keep draining stdout so that the host can never block on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self):
        with contextlib.suppress(Exception):
            while self.proc.stdout.read(4096):
                pass

    @property
    def authority(self):
        return f"{LOCALHOST}:{self.port}"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def log_tail(self, lines=30):
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def count_log(self, needle):
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


class RssSampler:
    """Samples the host's RSS every `interval` s in the background; `peak` is the maximum."""

    def __init__(self, host, interval=0.05):
        self.host, self.interval, self.peak, self._task = host, interval, 0, None

    async def __aenter__(self):
        self.peak = self.host.rss_kib()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self):
        while True:
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.host.rss_kib())
            await asyncio.sleep(self.interval)

    async def __aexit__(self, *exc):
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            self.peak = max(self.peak, self.host.rss_kib())


# --------------------------------------------------------------------------------
# The bystander (a process of its own, see bystander.py)
# --------------------------------------------------------------------------------

def quantile(samples, q):
    """Nearest-rank quantile."""
    if not samples:
        return None
    s = sorted(samples)
    rank = min(len(s), max(1, int(-(-q * len(s) // 1))))
    return s[rank - 1]


class Bystander:
    def __init__(self, port, mode="echo", interval=0.02):
        self.port, self.mode, self.interval = port, mode, interval
        self.proc = None
        self.result = None

    async def start(self, timeout=20):
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(BYSTANDER), "--port", str(self.port), "--mode", self.mode,
            "--interval", str(self.interval),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            raise AssertionError(f"the bystander did not warm up within {timeout} s")
        if line.strip() != b"ready":
            await self.proc.wait()
            raise AssertionError(f"the bystander did not start: {line!r}")
        return self

    async def stop(self, timeout=10):
        """Stops it and returns {'samples_ms': [...], 'errors': [...]} (idempotent)."""
        if self.result is not None:
            return self.result
        try:
            self.proc.stdin.write(b"stop\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            self.result = json.loads(line)
        except (asyncio.TimeoutError, ValueError, ConnectionError) as e:
            self.result = {"samples_ms": [], "errors": [f"bystander did not report: {e!r}"]}
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        return self.result


# --------------------------------------------------------------------------------
# WebSocket clients
# --------------------------------------------------------------------------------

class Closed(Exception):
    pass


class WsClient:
    """A client over asyncio streams, for clients that read what they get."""

    def __init__(self, reader, writer, response_headers=None):
        self.reader, self.writer = reader, writer
        self.parser = wf.FrameParser()
        self.frames = collections.deque()
        self.headers = response_headers or {}
        self.eof = False

    @classmethod
    async def connect(cls, port, *, path="/", extensions=None, extra_headers=(), timeout=10):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOCALHOST, port, limit=4 * MIB), timeout)
        request, key = wf.handshake_request(f"{LOCALHOST}:{port}", path=path, extensions=extensions,
                                            extra_headers=extra_headers)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status, headers = wf.parse_response_head(head[:-4])
        if status != 101 or headers.get("sec-websocket-accept") != wf.accept_value(key):
            writer.close()
            raise AssertionError(f"handshake answered {status} {headers}")
        return cls(reader, writer, headers)

    async def send(self, data):
        self.writer.write(data)
        await self.writer.drain()

    async def recv_frame(self, timeout=10):
        """The next frame, or None at EOF (or a reset)."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError()
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 20), remaining)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.eof = True
                continue
            self.frames.extend(self.parser.feed(data))
        return self.frames.popleft()

    async def recv_message(self, timeout=10, answer_pings=True):
        """The next data message as (opcode, bytes), reassembled; raises Closed(frame or None)."""
        opcode, parts = None, []
        deadline = time.monotonic() + timeout
        while True:
            f = await self.recv_frame(max(0.001, deadline - time.monotonic()))
            if f is None:
                raise Closed(None)
            if f.opcode == wf.OP_PING:
                if answer_pings:
                    await self.send(wf.frame(wf.OP_PONG, f.payload))
                continue
            if f.opcode == wf.OP_PONG:
                continue
            if f.opcode == wf.OP_CLOSE:
                raise Closed(f)
            if opcode is None:
                opcode = f.opcode
            parts.append(f.payload)
            if f.fin:
                return opcode, b"".join(parts)

    async def wait_close(self, timeout=10, answer=False):
        """Reads until the server's close frame and then EOF. Returns (close code or None,
        frames before it, EOF seen). With `answer`, echoes the close frame as a polite
        client does (so the server need not wait for its close timeout); the time the
        close frame arrived is left in `self.close_at`."""
        before = []
        code = None
        self.close_at = None
        deadline = time.monotonic() + timeout
        try:
            while True:
                f = await self.recv_frame(max(0.001, deadline - time.monotonic()))
                if f is None:
                    return code, before, True
                if f.opcode == wf.OP_CLOSE and code is None:
                    code = f.close_code()
                    self.close_at = time.monotonic()
                    if answer:
                        with contextlib.suppress(ConnectionError):
                            await self.send(wf.close_frame(code) if len(f.payload) >= 2 else wf.frame(wf.OP_CLOSE))
                elif code is None:
                    before.append(f)
        except asyncio.TimeoutError:
            return code, before, False
        except wf.ProtocolViolation:
            return code, before, False

    def abort(self):
        """Drops the connection with a TCP reset (no FIN, no close frame)."""
        sock = self.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self):
        with contextlib.suppress(Exception):
            self.writer.close()


class RawClient:
    """A bare non-blocking socket: for clients that must never read (nothing drains
    its receive buffer, unlike an asyncio stream transport)."""

    def __init__(self, sock, leftover=b""):
        self.sock = sock
        self.leftover = leftover

    @classmethod
    async def connect(cls, port, *, rcvbuf=None, handshake=True, extensions=None, timeout=10):
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await asyncio.wait_for(loop.sock_connect(sock, (LOCALHOST, port)), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock)
        if handshake:
            request, key = wf.handshake_request(f"{LOCALHOST}:{port}", extensions=extensions)
            await loop.sock_sendall(sock, request)
            data = b""
            deadline = time.monotonic() + timeout
            while b"\r\n\r\n" not in data:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), max(0.001, deadline - time.monotonic()))
                if not chunk:
                    raise AssertionError("EOF during the handshake")
                data += chunk
            head, _, client.leftover = data.partition(b"\r\n\r\n")
            status, headers = wf.parse_response_head(head)
            assert status == 101 and headers.get("sec-websocket-accept") == wf.accept_value(key), (status, headers)
        return client

    async def send_bounded(self, data, stall_after):
        """Sends as much of `data` as the kernel takes. Returns (bytes sent, stalled):
        stalled if no byte could be written for `stall_after` s. Raises Closed if
        the connection was reset."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                n = self.sock.send(view[sent:])
                sent += n
                continue
            except BlockingIOError:
                pass
            except OSError as e:
                raise Closed(e)
            fut = loop.create_future()
            loop.add_writer(self.sock.fileno(), lambda: fut.done() or fut.set_result(None))
            try:
                await asyncio.wait_for(fut, stall_after)
            except asyncio.TimeoutError:
                return sent, True
            finally:
                loop.remove_writer(self.sock.fileno())
        return sent, False

    def tcp_state(self):
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return info[0]

    def peer_gone(self):
        """The server closed (FIN received: CLOSE_WAIT) or reset (CLOSE) the connection."""
        return self.tcp_state() in (7, 8)

    def bytes_waiting(self):
        """Bytes in the receive buffer, without reading them."""
        buf = bytearray(4)
        fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, buf)
        return struct.unpack("i", buf)[0]

    async def read_all(self, timeout):
        """Now reads everything: (frames, EOF seen). Used after the fact, to see what a
        non-reader had been sent."""
        loop = asyncio.get_running_loop()
        parser = wf.FrameParser()
        got = parser.feed(self.leftover)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got, False
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 20), remaining)
            except asyncio.TimeoutError:
                return got, False
            except OSError:
                return got, True  # reset
            if not data:
                return got, True
            got.extend(parser.feed(data))

    def abort(self):
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()


async def wait_until(predicate, timeout, interval=0.05):
    """Polls `predicate` until it is true or `timeout` passes (for effects outside the
    process, such as a socket's TCP state); returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


async def repeat(make_round, *, min_seconds=3.0, max_rounds=100):
    """Runs `await make_round()` again and again until `min_seconds` passed (at most
    `max_rounds` times), so that even a quick attack lasts long enough for the
    bystander's p99 to mean something. Returns the list of round results."""
    results = []
    started = time.monotonic()
    for _ in range(max_rounds):
        results.append(await make_round())
        if time.monotonic() - started >= min_seconds:
            break
    return results


async def read_http_response(reader, timeout):
    """(status or None, EOF after it): reads an HTTP response head, then until EOF."""
    status = None
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.001, deadline - time.monotonic()))
            if not chunk:
                return (wf.parse_response_head(data.split(b"\r\n\r\n")[0])[0] if data.startswith(b"HTTP/") else None), True
            data += chunk
        status = wf.parse_response_head(data.split(b"\r\n\r\n")[0])[0]
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), max(0.001, deadline - time.monotonic()))
            if not chunk:
                return status, True
    except (ConnectionResetError, BrokenPipeError):
        return status, True
    except asyncio.TimeoutError:
        return status, False


# --------------------------------------------------------------------------------
# One case: its host, its bystander, its numbers
# --------------------------------------------------------------------------------

RESULTS = []  # filled by Case.record(), written by conftest at the end of the session


class Case:
    """What one test measured. The test fills it in as it goes (so that a failing or
    timed-out case still reports what it saw), conftest adds the outcome."""

    def __init__(self, name, workdir, cache_dir):
        self.name = name
        self.workdir = Path(workdir)
        self.cache_dir = cache_dir
        self.hosts = []
        self.bystanders = []
        self.row = {"case": name, "outcome": "?", "rss_before": None, "rss_peak": None,
                    "rss_after": None, "rss_bound": None, "growth_kind": "peak",
                    "p99": None, "max": None, "samples": None, "p99_limit": None, "notes": ""}
        RESULTS.append(self.row)

    def host(self, plugin, *flags):
        h = Host(plugin, flags, self.workdir, self.cache_dir).start()
        self.hosts.append(h)
        return h

    async def bystander(self, host, mode="echo"):
        b = await Bystander(host.port, mode).start()
        self.bystanders.append(b)
        return b

    def note(self, text):
        self.row["notes"] = (self.row["notes"] + "; " if self.row["notes"] else "") + text

    async def attack(self, host, bystander, attack, *, rss_bound_mib, p99_limit_ms, timeout,
                     settle=None):
        """Runs the `attack` coroutine against `host` with `bystander` running and the
        RSS sampled, bounded by `timeout` s. Records the numbers (before asserting) and
        returns the attack's result, or raises AssertionError on its timeout."""
        self.row["rss_bound"] = rss_bound_mib
        self.row["p99_limit"] = p99_limit_ms
        self.row["rss_before"] = host.rss_kib()
        sampler = RssSampler(host)
        timed_out = False
        result = None
        async with sampler:
            try:
                result = await asyncio.wait_for(attack, timeout)
            except asyncio.TimeoutError:
                timed_out = True
            finally:
                self.row["rss_peak"] = max(sampler.peak, host.rss_kib() if host.alive() else 0)
        if host.alive():
            self.row["rss_after"] = host.rss_kib()
        stats = await bystander.stop()
        samples = stats["samples_ms"]
        self.row["samples"] = len(samples)
        self.row["p99"] = quantile(samples, 0.99)
        self.row["max"] = max(samples) if samples else None
        self.bystander_errors = stats["errors"]
        if timed_out:
            self.note(f"attack did not finish within {timeout} s")
        return timed_out, result

    def check_common(self, host, *, timed_out=False):
        """The checks every case makes: the host is alive, RSS within the bound, the
        bystander kept its connection and a low p99."""
        r = self.row
        assert host.alive(), f"the host died (exit {host.proc.poll()}); log:\n{host.log_tail()}"
        assert not timed_out, f"{self.name}: the attack did not complete in time ({r['notes']})"
        growth = (r["rss_peak"] if r["growth_kind"] == "peak" else r["rss_after"]) - r["rss_before"]
        assert growth <= r["rss_bound"] * 1024, (
            f"RSS grew by {growth / 1024:.1f} MiB ({r['growth_kind']}), bound {r['rss_bound']} MiB: "
            f"before {r['rss_before']} KiB, peak {r['rss_peak']} KiB, after {r['rss_after']} KiB")
        assert not self.bystander_errors, f"bystander: {self.bystander_errors}"
        # Latency first: a stalled server also leaves few samples, and the stall is the news.
        assert r["p99"] is None or r["p99"] < r["p99_limit"], (
            f"bystander p99 {r['p99']:.1f} ms (max {r['max']:.1f} ms, {r['samples']} samples) >= {r['p99_limit']} ms")
        assert r["samples"] and r["samples"] >= 20, f"the bystander got only {r['samples']} samples"

    def run(self, coro_fn, timeout):
        """Runs the test body `coro_fn(self)` in a fresh event loop, failing (not hanging)
        after `timeout` s; bystanders are stopped in the same loop whatever happens."""
        async def body():
            try:
                return await asyncio.wait_for(coro_fn(self), timeout)
            except asyncio.TimeoutError:
                self.note(f"test timed out after {timeout} s")
                raise AssertionError(f"{self.name}: timed out after {timeout} s") from None
            finally:
                for b in self.bystanders:
                    await b.stop()
        return asyncio.run(body())

    def teardown(self):
        for h in self.hosts:
            h.stop()


def fmt_mib(kib):
    return "–" if kib is None else f"{kib / 1024:+.1f}"


def write_report():
    lines = [
        "| case | result | RSS before (MiB) | peak growth (MiB) | growth after (MiB) | bound (MiB) | bystander p99 (ms) | max (ms) | samples | p99 limit (ms) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in RESULTS:
        before = r["rss_before"]
        peak = None if before is None or r["rss_peak"] is None else r["rss_peak"] - before
        after = None if before is None or r["rss_after"] is None else r["rss_after"] - before
        bound = "–" if r["rss_bound"] is None else f"{r['rss_bound']} ({r['growth_kind']})"
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["case"], r["outcome"],
            "–" if before is None else f"{before / 1024:.1f}",
            fmt_mib(peak), fmt_mib(after), bound,
            "–" if r["p99"] is None else f"{r['p99']:.1f}",
            "–" if r["max"] is None else f"{r['max']:.1f}",
            "–" if r["samples"] is None else r["samples"],
            "–" if r["p99_limit"] is None else r["p99_limit"],
            r["notes"].replace("|", "/")))
    try:
        st = HOST_BIN.stat()
        built = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(st.st_mtime))
    except OSError:
        built = "?"
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        head = "?"
    header = (
        "# wsplug adversarial suite\n\n"
        f"Host: `{HOST_BIN}` {' '.join(HOST_FLAGS)} (built {built}; tree {head}); bystander: one well-behaved client sending a timestamped message every "
        "20 ms through the plugin (round trip through echo/chaos; one-way through broadcast) during "
        "the attack. RSS from /proc/PID/status VmRSS, sampled every 50 ms; peak growth is the "
        "largest sample minus the value before the attack.\n\n")
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    text = header + "\n".join(lines) + "\n"
    REPORT_PATH.write_text(text)
    return text

"""The bystander: a well-behaved client that measures the server's latency while a
test attacks it. It runs as a process of its own, so that the attacking test's
Python work (building frames, parsing floods) cannot delay it through the GIL.

    python bystander.py --port PORT [--mode echo|broadcast] [--interval 0.02]

echo mode: one connection sends a timestamped text message every `interval`
seconds (one in flight at a time) and records each round trip through the
plugin (echo.wasm, or chaos.wasm, which echoes ordinary text).

broadcast mode (broadcast.wasm relays to every other connection, so nothing comes
back to the sender): connection A sends a timestamped message every `interval`,
connection B records when each arrives (one-way latency, same clock); both read
everything else they receive, so they are never slow readers themselves.

Protocol with the parent: prints `ready` after a warm-up of 10 samples; on `stop`
(a line on stdin) or stdin closing, prints one JSON line with the samples (ms) and
any error, and exits. A message still unanswered at `stop` counts as a sample of
its age so far (a stalled server shows up as one huge sample, not as no sample).
"""

import argparse
import json
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import frames as wf  # noqa: E402

WARMUP = 10


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request, key = wf.handshake_request(f"127.0.0.1:{port}", path="/bystander")
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("bystander: EOF during the handshake")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status, headers = wf.parse_response_head(head)
        if status != 101 or headers.get("sec-websocket-accept") != wf.accept_value(key):
            raise ConnectionError(f"bystander: handshake answered {status} {headers}")
        self.parser = wf.FrameParser()
        self.pending = self.parser.feed(rest)
        self.sock.settimeout(None)
        self.sock.setblocking(False)
        self.closed = None

    def fileno(self):
        return self.sock.fileno()

    def send(self, data):
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def read_frames(self):
        """Frames now readable (answers pings); sets `closed` on a close frame or EOF."""
        out, self.pending = self.pending, []
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            data = None
        except OSError as e:
            self.closed = f"socket error {e}"
            return out
        if data == b"":
            self.closed = self.closed or "EOF without a close frame"
        elif data:
            out.extend(self.parser.feed(data))
        result = []
        for f in out:
            if f.opcode == wf.OP_PING:
                self.send(wf.frame(wf.OP_PONG, f.payload))
            elif f.opcode == wf.OP_CLOSE:
                self.closed = f"close frame {f.close_code()}"
            else:
                result.append(f)
        return result


def run(args):
    stdin = sys.stdin.buffer
    samples = []  # milliseconds
    errors = []
    warm = 0
    ready_sent = False
    seq = 0
    interval = args.interval

    def stop_requested(readable):
        if stdin in readable:
            line = stdin.readline()
            return not line or line.strip() == b"stop"
        return False

    if args.mode == "echo":
        conn = Conn(args.port)
        in_flight = None  # (seq, t0)
        next_send = time.monotonic()
        while True:
            now = time.monotonic()
            if in_flight is None and conn.closed is None and now >= next_send:
                seq += 1
                t0 = time.monotonic()
                conn.send(wf.frame(wf.OP_TEXT, f"bystander {seq} {t0:.6f}"))
                in_flight = (seq, t0)
                next_send = t0 + interval
            wait = 0.05 if in_flight is not None or conn.closed else max(0.0, next_send - time.monotonic())
            watched = [stdin] if conn.closed else [stdin, conn]
            readable, _, _ = select.select(watched, [], [], wait)
            if stop_requested(readable):
                break
            if conn in readable:
                for f in conn.read_frames():
                    if f.opcode == wf.OP_TEXT and in_flight is not None:
                        got = f.payload.decode(errors="replace").split(" ")
                        if len(got) == 3 and got[1] == str(in_flight[0]):
                            rtt = (time.monotonic() - in_flight[1]) * 1000
                            in_flight = None
                            if warm < WARMUP:
                                warm += 1
                            else:
                                samples.append(rtt)
                if conn.closed and not errors:
                    errors.append(f"bystander connection lost: {conn.closed}")
            if not ready_sent and warm >= WARMUP:
                print("ready", flush=True)
                ready_sent = True
        if in_flight is not None and ready_sent:
            samples.append((time.monotonic() - in_flight[1]) * 1000)
    else:
        sender, receiver = Conn(args.port), Conn(args.port)
        sent = {}  # seq -> t0, not yet received
        next_send = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_send and sender.closed is None:
                seq += 1
                t0 = time.monotonic()
                sender.send(wf.frame(wf.OP_TEXT, f"bystander {seq} {t0:.6f}"))
                sent[seq] = t0
                next_send = t0 + interval
            watched = [stdin] + [c for c in (sender, receiver) if c.closed is None]
            readable, _, _ = select.select(watched, [], [], max(0.0, next_send - time.monotonic()))
            if stop_requested(readable):
                break
            if sender in readable:
                sender.read_frames()  # broadcasts from the test's clients: drained, unused
            if receiver in readable:
                for f in receiver.read_frames():
                    if f.opcode == wf.OP_TEXT and f.payload.startswith(b"bystander "):
                        s = int(f.payload.split(b" ")[1])
                        t0 = sent.pop(s, None)
                        if t0 is None:
                            continue
                        latency = (time.monotonic() - t0) * 1000
                        if warm < WARMUP:
                            warm += 1
                        else:
                            samples.append(latency)
            for name, c in (("sender", sender), ("receiver", receiver)):
                if c.closed and not any(name in e for e in errors):
                    errors.append(f"bystander {name} connection lost: {c.closed}")
            if not ready_sent and warm >= WARMUP:
                print("ready", flush=True)
                ready_sent = True
        if ready_sent:
            now = time.monotonic()
            # Messages sent in the last interval may legitimately still be on their way.
            samples.extend((now - t0) * 1000 for t0 in sent.values() if now - t0 > 0.1)
    print(json.dumps({"samples_ms": samples, "errors": errors, "sent": seq}), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["echo", "broadcast"], default="echo")
    p.add_argument("--interval", type=float, default=0.02)
    args = p.parse_args()
    try:
        run(args)
    except Exception as e:  # report, so that the parent's assertion says why
        print(json.dumps({"samples_ms": [], "errors": [f"bystander crashed: {e!r}"], "sent": 0}), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

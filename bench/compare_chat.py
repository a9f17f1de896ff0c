"""A/B of two host builds on the chat workload of `make bench`'s chat rows, alternating
which goes first in each round: deliveries/s per run, and the per-round ratio's median
and range. For changes to the stores, which `run.py --compare` (echo and fanout) does not
reach. The plugin must load on both hosts: `chat-c` (API 0.2) runs on any host since 0.2.

    python3 bench/compare_chat.py --a target/release/host --b /tmp/host-before --cluster
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile

import run


def once(binary, plugin, cluster, duration):
    """Deliveries/s of one run of `binary` serving `plugin`, with a Redis of its own if
    `cluster`, and a fresh store."""
    procs = []
    try:
        extra = []
        if cluster:
            redis, port = run.start_redis()
            procs.append(redis)
            extra = ["--cluster", f"redis://127.0.0.1:{port}"]
        host, addr = run.start([binary, "--listen", "127.0.0.1:0", "--plugin", os.path.join(run.PLUGINS, plugin + ".wasm"),
                                "--log", "warn", "--store-dir", tempfile.mkdtemp(), *extra])
        procs.append(host)
        out = subprocess.run([os.path.join(run.RELEASE, "wsbench"), "--addr", addr, *run.CHAT_ARGS,
                              "--duration", str(duration)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        return json.loads(lines[-1][len("RESULT "):])["deliveries_per_s"] if lines else None
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="the host build measured")
    parser.add_argument("--b", required=True, help="the host build it is compared with")
    parser.add_argument("--plugin", default="chat-c", help="the chat plugin both run (default chat-c)")
    parser.add_argument("--cluster", action="store_true", help="as a one-host cluster: the store is Redis")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    ratios = []
    for round_ in range(args.rounds):
        order = ["a", "b"] if round_ % 2 == 0 else ["b", "a"]
        got = {side: once(getattr(args, side), args.plugin, args.cluster, args.duration) for side in order}
        if got["a"] and got["b"]:
            ratios.append(got["a"] / got["b"])
        print(f"round {round_ + 1}: a {got['a']} b {got['b']}", flush=True)
    if ratios:
        print(f"a / b deliveries/s: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}, "
              f"{len(ratios)} rounds")


if __name__ == "__main__":
    main()

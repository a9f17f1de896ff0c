"""Instructions per message, counted by valgrind's callgrind, for an A/B of two host
builds where timing is too noisy to show a few per cent: on this project's 2-vCPU VMs a
3-second run moves 20-40 % between rounds, while an instruction count repeats (it does not
depend on what else the machine is doing; perf's counters are not available here).

Each run starts the host under callgrind (the compile cache keeps the plugin's compile out
of it), resets the counts once it listens, drives `wsbench echo` for `--duration` seconds,
and takes the count of that window from callgrind's dump: every thread of the host, its
idle polls included, divided by the messages echoed. Run slowly (about 20 x), so the
window holds fewer messages than a timed run; compare builds with each other, not with
the timed rows.

    python3 bench/instructions.py --a target/release/host --b /tmp/host-before --rounds 3
"""
import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import tempfile
import time

import run

CACHE = os.path.join(tempfile.gettempdir(), "wsplug-bench-cache")


def once(binary, plugin, stateless, duration):
    """Instructions per message of one run, or None."""
    out_dir = tempfile.mkdtemp(prefix="wsplug-callgrind-")
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p", binary,
               "--listen", "127.0.0.1:0", "--plugin", os.path.join(run.PLUGINS, plugin + ".wasm"), "--log", "warn",
               "--cache-dir", CACHE, *(["--stateless"] if stateless else [])]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        addr = None
        deadline = time.monotonic() + 120
        while addr is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                return None
            match = re.search(r"ws://([\d.]+:\d+)", line)
            addr = match and match.group(1)
        # Counts from here on: callgrind starts them again at each dump.
        subprocess.run(["callgrind_control", "--dump=start", str(proc.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = subprocess.run([os.path.join(run.RELEASE, "wsbench"), "--addr", addr, "echo", "--conns", "10",
                              "--size", "20", "--inflight", "1", "--duration", str(duration)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300)
        subprocess.run(["callgrind_control", "--dump=end", str(proc.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if not result:
            return None
        messages = json.loads(result[-1][len("RESULT "):])["msgs_per_s"] * duration
        dumps = sorted(glob.glob(os.path.join(out_dir, "cg.*.*")), key=lambda f: int(f.rsplit(".", 1)[1]))
        with open(dumps[-1]) as f:
            totals = next(int(line.split()[1]) for line in f if line.startswith("totals:"))
        return totals / messages
    finally:
        proc.kill()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="the host build measured")
    parser.add_argument("--b", required=True, help="the host build it is compared with")
    parser.add_argument("--plugin", default="echo-raw", help="the echo plugin both run (default echo-raw, API 0.1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    for stateless in (False, True):
        mode = "stateless" if stateless else "default"
        counts = {"a": [], "b": []}
        for round_ in range(args.rounds):
            for side in (["a", "b"] if round_ % 2 == 0 else ["b", "a"]):
                count = once(getattr(args, side), args.plugin, stateless, args.duration)
                print(f"{mode} round {round_ + 1} {side}: {count and round(count)} instructions/message", flush=True)
                if count:
                    counts[side].append(count)
        if counts["a"] and counts["b"]:
            a, b = statistics.median(counts["a"]), statistics.median(counts["b"])
            spread = lambda xs: f"{min(xs):,.0f}-{max(xs):,.0f}"
            print(f"echo 10 x 20 B, 1 in flight, {mode}: a {a:,.0f} ({spread(counts['a'])}), "
                  f"b {b:,.0f} ({spread(counts['b'])}) instructions/message; b / a = {b / a:.3f}")


if __name__ == "__main__":
    main()

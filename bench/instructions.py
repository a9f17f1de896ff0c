"""Instructions per message, counted by valgrind's callgrind, for an A/B of two host
builds where timing is too noisy to show a few per cent: on this project's 2-vCPU VMs a
3-second run moves 20-40 % between rounds, while an instruction count repeats (it does not
depend on what else the machine is doing; perf's counters are not available here).

Each run starts the host under callgrind (the compile cache keeps the plugin's compile out
of it), resets the counts once it listens, drives `wsbench` for `--duration` seconds, and
takes the count of that window from callgrind's dump: every thread of the host, its idle
polls included, divided by the messages echoed (`echo`: 10 connections, 20 B, one in
flight, plugin `echo-raw`) or delivered (`fanout`: 100 connections, one sender, 8 in
flight, plugin `broadcast`). Run slowly (about 20 x), so the
window holds fewer messages than a timed run; compare builds with each other, not with
the timed rows.

    python3 bench/instructions.py --a target/release/host --b /tmp/host-before --rounds 3

`a / b` above 1 is what build a costs more.
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


# Per workload: the plugin, wsbench's arguments, and the count it reports per second.
WORKLOADS = {
    "echo": ("echo-raw", ["echo", "--conns", "10", "--size", "20", "--inflight", "1"], "msgs_per_s"),
    "fanout": ("broadcast", ["fanout", "--conns", "100", "--senders", "1", "--size", "32", "--window", "8"],
               "deliveries_per_s"),
}


def once(binary, workload, stateless, duration):
    """Instructions per message of one run, or None."""
    plugin, wsbench_args, rate = WORKLOADS[workload]
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
        out = subprocess.run([os.path.join(run.RELEASE, "wsbench"), "--addr", addr, *wsbench_args,
                              "--duration", str(duration)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300)
        subprocess.run(["callgrind_control", "--dump=end", str(proc.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if not result:
            return None
        messages = json.loads(result[-1][len("RESULT "):])[rate] * duration
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
    parser.add_argument("--workload", choices=["echo", "fanout", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    workloads = ["echo", "fanout"] if args.workload == "both" else [args.workload]
    for workload in workloads:
        for stateless in (False, True):
            mode = "stateless" if stateless else "default"
            counts = {"a": [], "b": []}
            for round_ in range(args.rounds):
                for side in (["a", "b"] if round_ % 2 == 0 else ["b", "a"]):
                    count = once(getattr(args, side), workload, stateless, args.duration)
                    print(f"{workload} {mode} round {round_ + 1} {side}: {count and round(count)}", flush=True)
                    if count:
                        counts[side].append(count)
            if counts["a"] and counts["b"]:
                a, b = statistics.median(counts["a"]), statistics.median(counts["b"])
                spread = lambda xs: f"{min(xs):,.0f}-{max(xs):,.0f}"
                print(f"RESULT {workload} {mode}: a {a:,.0f} ({spread(counts['a'])}), b {b:,.0f} "
                      f"({spread(counts['b'])}) instructions per message; a / b = {a / b:.3f}", flush=True)


if __name__ == "__main__":
    main()

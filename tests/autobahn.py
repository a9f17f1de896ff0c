#!/usr/bin/env python3
"""Runs the Autobahn TestSuite (via kosoku) against `host --plugin echo.wasm`.

Starts the host on a free port, runs every server case, and fails unless all 517
cases ran and none is FAILED, UNIMPLEMENTED or WRONG CODE (in `behavior` or
`behaviorClose`). NON-STRICT cases are counted and listed separately; docs/testing.md
explains each one.
"""

import argparse
import collections
import json
import os
import re
import select
import subprocess
import sys
import time

EXPECTED_CASES = 517
ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}


def start_host(host, plugin, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [host, "--listen", "127.0.0.1:0", "--plugin", plugin, "--log", "warn",
         # Autobahn sends messages of up to 16 MiB (cases 9.*).
         "--max-payload-size", str(16 * 1024 * 1024)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    # The host prints one line once it listens; wait for it (bounded), never sleep.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            match = re.search(r"ws://([\d.]+:\d+)", line)
            if match:
                return proc, match.group(1)
            if not line:
                break
        if proc.poll() is not None:
            break
    proc.kill()
    sys.exit(f"autobahn: the host did not start; see {log_path}")


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True, help="path to the host binary")
    parser.add_argument("--plugin", required=True, help="path to echo.wasm")
    parser.add_argument("--outdir", required=True, help="where kosoku writes its report")
    parser.add_argument("--kosoku", default="kosoku", help="kosoku executable")
    parser.add_argument("--parallelism", default="2")
    args = parser.parse_args()

    os.makedirs(args.outdir, exist_ok=True)
    index_path = os.path.join(args.outdir, "index.json")
    if os.path.exists(index_path):
        os.remove(index_path)
    proc, address = start_host(args.host, args.plugin, os.path.join(args.outdir, "host.log"))
    print(f"autobahn: running {EXPECTED_CASES} cases against {address} (report in {args.outdir})", flush=True)
    try:
        started = time.monotonic()
        run = subprocess.run(
            [args.kosoku, "-p", args.parallelism, "-o", args.outdir, address],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        elapsed = time.monotonic() - started
        crashed = proc.poll() is not None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if crashed:
        sys.exit(f"autobahn: the host exited during the run (status {proc.returncode})")
    if not os.path.exists(index_path):
        print(run.stdout[-4000:])
        sys.exit("autobahn: kosoku wrote no index.json")

    with open(index_path) as f:
        index = json.load(f)
    cases = {}
    for agent_cases in index.values():
        cases.update(agent_cases)

    counts = collections.Counter()
    bad, non_strict = [], []
    for case_id in sorted(cases, key=case_key):
        result = cases[case_id]
        behavior, close = result["behavior"], result["behaviorClose"]
        counts[behavior] += 1
        if behavior not in ACCEPTED or close not in ACCEPTED:
            bad.append(f"{case_id}: behavior={behavior} behaviorClose={close}")
        elif "NON-STRICT" in (behavior, close):
            non_strict.append(case_id)

    print(f"autobahn: {len(cases)} cases in {elapsed:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if non_strict:
        print(f"autobahn: NON-STRICT ({len(non_strict)}): {' '.join(non_strict)}")
    for line in bad:
        print(f"autobahn: FAIL {line}")
    missing = EXPECTED_CASES - len(cases)
    if missing:
        print(f"autobahn: {missing} of {EXPECTED_CASES} cases did not run")
    failed = len(bad) + max(missing, 0)
    print(f"autobahn: {len(cases) - len(bad)} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

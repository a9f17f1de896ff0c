#!/usr/bin/env python3
"""`make bench`: runs each scenario against wsplug and the reference servers, in the
same run, alternating servers within each round, and prints a table of medians with
ratios wsplug / reference.

Servers are started fresh for every measurement and announce their address on
stdout. The load generator is `wsbench` (bench/src/bin/wsbench.rs); its last line is
`RESULT {json}`.
"""

import argparse
import json
import os
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
PLUGINS = os.path.join(ROOT, "target", "wasm32-wasip2", "release")


# Scaling: the host pinned to one core (and wsbench to the other), against the host on
# both cores (sharing them with wsbench).
PINNED = "wsplug-1-core"
UNPINNED = "wsplug-2-cores"
# The same host serving the plugin as stateless (`--stateless`): an instance on each
# runtime thread, called on the connection's own thread.
STATELESS_SUFFIX = "-stateless"
STATELESS = "wsplug" + STATELESS_SUFFIX
# Past the plugin thread's ceiling: the JavaScript echo plugin keeps its thread busy (one
# core), served as stateless it runs on both.
JS_SCALING = "echo 100 x 20 B, JavaScript plugin: one plugin thread vs stateless"
SCALING = "echo 100 x 20 B, host on 1 core (taskset) vs 2"

# A stateless route under attack beside another route: api.wasm stateless on /attack,
# whose `spin` runs until its deadline cuts it, and echo.wasm on /, on a host of two
# runtime threads, without a budget per address (max_overruns_per_ip, off by default). The
# control is the same host with no attackers.
CONTROL = "wsplug-control"
UNDER_ATTACK = "wsplug-under-attack"
ATTACKERS = 4
ATTACK_TITLE = (f"echo 10 x 20 B, 1 in flight, beside a stateless route whose {ATTACKERS} clients "
                "send calls that spin (p99 µs): control vs attack")

# `--compare PATH`: another build of the host, run as "wsplug-before" beside "wsplug" in
# the scenarios of COMPARED (and served as stateless beside "wsplug-stateless" where the
# scenario has it), to measure what a change costs: per round, each pair's ratio.
COMPARE_AS = "wsplug-before"
COMPARED = ["echo 100 x 20 B", "echo 100 x 20 B, 1 in flight", "echo 100 x 16 KiB",
            "fanout 1000 conns x 1 sender", "fanout 1000 conns x 1 sender, 1 in flight",
            "fanout 1000 conns x 1 sender, 1 host vs 3 hosts via Redis",
            "latency of one broadcast, same host vs across hosts via Redis (p50 µs)"]
compare_binary = None
# `NAME-cluster-N`: N hosts of server NAME sharing a Redis server of the bench's own.
CLUSTER = re.compile(r"^(.*)-cluster-(\d+)$")
# `--cluster-secret`: "wsplug"'s clusters authenticate their messages with this secret
# (not a compared host's, which may predate the setting).
cluster_secret = None
# `--host PATH`: the host binary "wsplug" runs (default: the release build).
host_binary = "host"
# `--echo-plugin NAME`: the echo plugin wsplug (and wsplug-before) run; a host from before
# plugin API 0.3 needs an older one (echo-raw, 0.1, runs on every host; so does broadcast).
echo_plugin = "echo"
# Where each run's key-value store goes (a fresh directory per server), made by main().
store_root = None
# The chat room with its history in the key-value store, and the same chat built without
# it: what keeping the history costs, and what it costs a bystander during a burst.
CHAT = "wsplug-chat"
CHAT_NO_HISTORY = "wsplug-chat-nohistory"
CHAT_ARGS = ["--path", "/?name=u{n}", "fanout", "--text", "--conns", "3", "--senders", "2", "--bystander",
             "--size", "64", "--window", "1000"]
CHAT_THROUGHPUT = "chat, 1 sender x 1000 in flight + 1 bystander, history vs none (deliveries/s)"
CHAT_BYSTANDER = "chat, the bystander's p99 (µs) beside bursts of 1000 messages, history vs none"
# The same room as a one-host cluster: its history in Redis, whose writes are pipelined.
CHAT_CLUSTER = "chat as a 1-host cluster, history in Redis vs none (deliveries/s)"


def server_command(name, mode, extra):
    """The command line of a server under test; `mode` is echo or broadcast."""
    if name == COMPARE_AS:
        command = server_command("wsplug", mode, extra)
        command[0] = compare_binary
        return command
    if name == PINNED:
        return ["taskset", "-c", "0", *server_command("wsplug", mode, extra)]
    if name == UNPINNED:
        return server_command("wsplug", mode, extra)
    if name in (CONTROL, UNDER_ATTACK):
        config = os.path.join(tempfile.gettempdir(), "wsplug-bench-attack.toml")
        with open(config, "w") as f:
            f.write(f"""threads = 2
cache_dir = "{os.path.join(tempfile.gettempdir(), 'wsplug-bench-cache')}"
[[route]]
path = "/attack"
plugin = "{os.path.join(PLUGINS, 'api.wasm')}"
stateless = true
plugin_deadline_ms = 100
[[route]]
name = "echo"
path = "/"
plugin = "{os.path.join(PLUGINS, echo_plugin + '.wasm')}"
""")
        return [os.path.join(RELEASE, host_binary), "--config", config, "--listen", "127.0.0.1:0", "--log", "error"]
    if name.endswith(STATELESS_SUFFIX):
        return server_command(name.removesuffix(STATELESS_SUFFIX), mode, [*extra, "--stateless"])
    if name.startswith("wsplug") or name.startswith("echo-"):
        # wsplug-native: the same host with the plugin replaced by native code;
        # echo-*: the host with another language's echo plugin.
        # wsplug-hook: the host with api.wasm, whose on-upgrade decides every handshake.
        binary = "wsplug-native-echo" if name == "wsplug-native" else host_binary
        plugin = echo_plugin + ".wasm" if mode == "echo" else "broadcast.wasm"
        if name.startswith("echo-"):
            plugin = name + ".wasm"
        if name == "wsplug-hook":
            plugin = "api.wasm"
        if name in (CHAT, CHAT_NO_HISTORY):
            # The chat as it runs by default (not the echo rows' deep outbound queues),
            # with a store of its own.
            return [
                os.path.join(RELEASE, host_binary), "--listen", "127.0.0.1:0",
                "--plugin", os.path.join(PLUGINS, name.removeprefix("wsplug-") + ".wasm"), "--log", "warn",
                "--cache-dir", os.path.join(tempfile.gettempdir(), "wsplug-bench-cache"),
                "--store-dir", tempfile.mkdtemp(dir=store_root), *extra,
            ]
        return [
            os.path.join(RELEASE, binary), "--listen", "127.0.0.1:0", "--plugin", os.path.join(PLUGINS, plugin),
            "--log", "warn", "--timeout", "120", "--max-connections", "100000",
            "--max-payload-size", str(16 << 20), "--max-messages-buffering", "10000",
            # The cache the plugin-call micro-benchmark (host/benches/plugin.rs) uses too.
            "--cache-dir", os.path.join(tempfile.gettempdir(), "wsplug-bench-cache"), *extra,
        ]
    if name == "fastwebsockets":
        return [os.path.join(RELEASE, "ref-fastwebsockets"), "--listen", "127.0.0.1:0", "--mode", mode]
    if name == "tokio-tungstenite":
        return [os.path.join(RELEASE, "ref-tungstenite"), "--listen", "127.0.0.1:0", "--mode", mode]
    if name == "node-ws":
        return ["node", os.path.join(ROOT, "bench", "node", "echo.mjs"), "--listen", "127.0.0.1:0"]
    raise ValueError(name)


def start(command):
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            match = re.search(r"wss?://([\d.]+:\d+)", line)
            if match:
                return proc, match.group(1)
            if not line:
                break
    proc.kill()
    sys.exit(f"bench: {command[0]} did not start")


def start_redis():
    """A redis-server of the bench's own on a free port, without persistence."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "Ready to accept connections" in line:
            return proc, port
    sys.exit("bench: redis-server did not start")


def measure(server, mode, wsbench_args, server_extra=()):
    """Runs wsbench against `server`. `wsplug-cluster-N` is N hosts sharing a Redis
    server; wsbench spreads its connections over them (its senders on the first)."""
    procs = []
    try:
        hosts, base = 1, server
        cluster = CLUSTER.match(server)
        if cluster:
            base, hosts = cluster[1], int(cluster[2])
            redis, port = start_redis()
            procs.append(redis)
            server_extra = [*server_extra, "--cluster", f"redis://127.0.0.1:{port}"]
            if cluster_secret and base == "wsplug":
                server_extra += ["--cluster-secret", cluster_secret]
        addrs = []
        for _ in range(hosts):
            proc, addr = start(server_command(base, mode, list(server_extra)))
            procs.append(proc)
            addrs.append(addr)
        pin = ["taskset", "-c", "1"] if server == PINNED else []
        attack = ["--attackers", str(ATTACKERS), "--attack-path", "/attack"] if server == UNDER_ATTACK else []
        plugin_before = thread_cpu_s(procs[-1].pid, "plugin")
        out = subprocess.run(
            [*pin, os.path.join(RELEASE, "wsbench"), "--addr", ",".join(addrs), "--server-pid", str(procs[-1].pid),
             *attack, *wsbench_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
        )
        plugin_after = thread_cpu_s(procs[-1].pid, "plugin")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        print(f"bench: wsbench failed against {server}: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    result = json.loads(lines[-1][len("RESULT "):])
    if plugin_before is not None and plugin_after is not None:
        result["plugin_thread_cpu_s"] = plugin_after - plugin_before
    return result


def thread_cpu_s(pid, name):
    """CPU seconds (user and system) of the threads of process `pid` named `name`, if any."""
    total, found = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            if comm == name:
                fields = stat[stat.rindex(")") + 2:].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
                found = True
    except OSError:
        return None
    return total / os.sysconf("SC_CLK_TCK") if found else None


# The echo plugin of each language; the first is the one "wsplug" runs.
LANGUAGE_PLUGINS = [("echo", "Rust (SDK)"), ("echo-raw", "Rust (bare bindings)"), ("echo-c", "C"),
                    ("echo-js", "JavaScript"), ("echo-py", "Python")]
LANGUAGES = "echo 100 x 20 B, plugin per language"
ECHO_20_DEPTH_1 = "echo 100 x 20 B, 1 in flight"

# The performance targets: (scenario, reference server, bound). A ratio bound
# is on wsplug / reference for throughput (at least), reference / wsplug for memory; an
# absolute bound (reference None) is on wsplug's own median (at most, for memory).
TARGETS = [
    ("echo 100 x 20 B", "fastwebsockets", 1.1),
    ("echo 100 x 20 B", "tokio-tungstenite", 1.3),
    ("echo 100 x 20 B", "wsplug-native", 0.9),
    (ECHO_20_DEPTH_1, "fastwebsockets", 1.1),
    (ECHO_20_DEPTH_1, "tokio-tungstenite", 1.3),
    (ECHO_20_DEPTH_1, "wsplug-native", 0.9),
    ("echo 100 x 16 KiB", "fastwebsockets", 1.0),
    ("echo 100 x 16 KiB, 1 in flight", "fastwebsockets", 1.0),
    ("echo 100 x 20 B, permessage-deflate", "node-ws", 1.5),
    ("fanout 1000 conns x 1 sender", "fastwebsockets", 1.2),
    ("fanout 1000 conns x 1 sender, 1 in flight", "fastwebsockets", 1.2),
    ("10,000 idle connections (KiB RSS/conn)", None, 4.0),
    ("10,000 idle compressed connections (KiB RSS/conn)", None, 64.0),
    (CHAT_THROUGHPUT, CHAT_NO_HISTORY, 0.8),
    # Within 2 x: the reference's p99 over the chat's, at least 0.5.
    (CHAT_BYSTANDER, CHAT_NO_HISTORY, 0.5),
]
CRITERION = os.path.join(ROOT, "target", "criterion", "plugin call")


def plugin_call_ns(plugin, size):
    """Median time of one plugin call from `cargo bench --bench plugin`, run just before."""
    try:
        with open(os.path.join(CRITERION, f"{plugin} {size}", "new", "estimates.json")) as f:
            return json.load(f)["median"]["point_estimate"]
    except OSError:
        return None


def problems(runs):
    """Lost messages, errors and failed connections over all runs of one server."""
    return sum(r.get("lost", 0) + r.get("errors", 0) + r.get("failed", 0) for r in runs)


def startup(plugin):
    """Start-up of the host with `plugin`, cold (compiled now) and warm (from the compile
    cache): the load time it logs, and the time until it listens (process start included)."""
    timings = []
    with tempfile.TemporaryDirectory() as cache:
        for _ in ("cold", "warm"):
            command = [os.path.join(RELEASE, "host"), "--listen", "127.0.0.1:0", "--log", "info",
                       "--plugin", os.path.join(PLUGINS, plugin + ".wasm"), "--cache-dir", cache]
            started = time.monotonic()
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                ready = proc.stdout.readline()
                ready_ms = (time.monotonic() - started) * 1000
            finally:
                proc.send_signal(signal.SIGTERM)
                _, log = proc.communicate(timeout=30)
            match = re.search(r"plugin loaded.*?load_ms=(\d+)", re.sub(r"\x1b\[[0-9;]*m", "", log))
            if "listening" not in ready or not match:
                return None
            timings.append((int(match.group(1)), ready_ms))
    return timings


def print_languages(results):
    """The per-language table: echo throughput through the host and the cost of one call."""
    rust = statistics.median([v for v, _ in results[(LANGUAGES, "wsplug")] if v is not None] or [0])
    print()
    print("Echo plugins by language: msgs/s through the host (echo 100 x 20 B), and one plugin call "
          "(on-text + send-text, criterion median, `cargo bench --bench plugin`).")
    print()
    print("| plugin | language | size | msgs/s | errors | vs Rust (SDK) | call 20 B (µs) | call 16 KiB (µs) "
          "| load cold / cached (ms) | ready cold / cached (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for plugin, language in LANGUAGE_PLUGINS:
        server = "wsplug" if plugin == "echo" else plugin
        runs = results.get((LANGUAGES, server), [])
        values = [v for v, _ in runs if v is not None]
        median = statistics.median(values) if values else None
        path = os.path.join(PLUGINS, plugin + ".wasm")
        size = f"{os.path.getsize(path) / 1024:,.0f} KiB" if os.path.exists(path) else "missing"
        calls = [plugin_call_ns(plugin, n) for n in (20, 16384)]
        calls = ["" if c is None else f"{c / 1000:.2f}" for c in calls]
        ratio = f"{median / rust:.2f}" if median and rust else ""
        shown = "failed" if median is None else f"{median:,.0f}"
        bad = problems([r for _, r in runs if r])
        times = startup(plugin) if os.path.exists(path) else None
        load = ready = "failed"
        if times:
            load = f"{times[0][0]:,} / {times[1][0]:,}"
            ready = f"{times[0][1]:,.0f} / {times[1][1]:,.0f}"
        print(f"| {plugin} | {language} | {size} | {shown} | {bad} | {ratio} | {calls[0]} | {calls[1]} "
              f"| {load} | {ready} |")


def scenarios(duration, certs):
    d = str(duration)
    wss = ["--ssl", "true", "--cert-file", certs] if certs else []
    return [
        # (title, metric, higher is better, [(server, mode, wsbench args, server args)])
        ("echo 100 x 20 B", "msgs_per_s", True, "echo",
         ["echo", "--conns", "100", "--size", "20", "--inflight", "4", "--duration", d],
         ["wsplug", "fastwebsockets", "tokio-tungstenite", "wsplug-native", STATELESS], []),
        # One message in flight per connection: how a chat or request/response client
        # behaves, where every message pays the host's thread hops in full.
        (ECHO_20_DEPTH_1, "msgs_per_s", True, "echo",
         ["echo", "--conns", "100", "--size", "20", "--inflight", "1", "--duration", d],
         ["wsplug", "fastwebsockets", "tokio-tungstenite", "wsplug-native", STATELESS], []),
        ("echo 100 x 16 KiB", "msgs_per_s", True, "echo",
         ["echo", "--conns", "100", "--size", "16384", "--inflight", "2", "--duration", d],
         ["wsplug", "fastwebsockets", "wsplug-native"], []),
        ("echo 100 x 16 KiB, 1 in flight", "msgs_per_s", True, "echo",
         ["echo", "--conns", "100", "--size", "16384", "--inflight", "1", "--duration", d],
         ["wsplug", "fastwebsockets", "wsplug-native", STATELESS], []),
        ("echo 100 x 20 B, permessage-deflate", "msgs_per_s", True, "echo",
         ["--deflate", "echo", "--conns", "100", "--size", "20", "--inflight", "4", "--duration", d],
         ["wsplug", "node-ws"], []),
        ("fanout 1000 conns x 1 sender", "deliveries_per_s", True, "broadcast",
         ["fanout", "--conns", "1000", "--senders", "1", "--size", "32", "--window", "8", "--duration", d],
         ["wsplug", "fastwebsockets", "tokio-tungstenite", STATELESS], []),
        ("fanout 1000 conns x 1 sender, 1 in flight", "deliveries_per_s", True, "broadcast",
         ["fanout", "--conns", "1000", "--senders", "1", "--size", "32", "--window", "1", "--duration", d],
         ["wsplug", "fastwebsockets", STATELESS], []),
        # Several hosts through Redis: the same fanout with the 1000 connections spread over
        # 3 hosts (the sender on the first), and the latency of one message from a sender on
        # one host to a receiver on another (one in flight), against the same on one host.
        ("fanout 1000 conns x 1 sender, 1 host vs 3 hosts via Redis", "deliveries_per_s", True, "broadcast",
         ["fanout", "--conns", "1000", "--senders", "1", "--size", "32", "--window", "8", "--duration", d],
         ["wsplug", "wsplug-cluster-3"], []),
        ("latency of one broadcast, same host vs across hosts via Redis (p50 µs)", "p50_us", False, "broadcast",
         ["fanout", "--conns", "2", "--senders", "1", "--size", "32", "--window", "1", "--duration", d],
         ["wsplug", "wsplug-cluster-2"], []),
        ("10,000 idle connections (KiB RSS/conn)", "rss_per_conn_kib", False, "echo",
         ["conns", "--conns", "10000"],
         ["wsplug", "fastwebsockets", "tokio-tungstenite"], []),
        # The cost of a plugin's on-upgrade per handshake: api.wasm decides each one (an
        # accept, one round trip to the plugin thread) against echo.wasm, which has no hook.
        ("10,000 handshakes, with and without on-upgrade (handshakes/s)", "handshakes_per_s", True, "echo",
         ["conns", "--conns", "10000"],
         ["wsplug", "wsplug-hook"], []),
        ("10,000 idle compressed connections (KiB RSS/conn)", "rss_per_conn_kib", False, "echo",
         ["--deflate", "conns", "--conns", "10000"],
         ["wsplug", "node-ws"], []),
        (LANGUAGES, "msgs_per_s", True, "echo",
         ["echo", "--conns", "100", "--size", "20", "--inflight", "4", "--duration", d],
         ["wsplug"] + [plugin for plugin, _ in LANGUAGE_PLUGINS[1:]], []),
        # Where the ceiling is: the host on one core against two, and the plugin thread's
        # share of the host's CPU time (printed below the main table).
        (SCALING, "msgs_per_s", True, "echo",
         ["echo", "--conns", "100", "--size", "20", "--inflight", "4", "--duration", d],
         [UNPINNED, PINNED], []),
        (JS_SCALING, "msgs_per_s", True, "echo",
         ["echo", "--conns", "100", "--size", "20", "--inflight", "4", "--duration", d],
         ["echo-js" + STATELESS_SUFFIX, "echo-js"], []),
        # What one route's attackers cost another route's clients: the echo's p99 with
        # and without them (the ratio is attack / control).
        (ATTACK_TITLE, "p99_us", False, "echo",
         ["echo", "--conns", "10", "--size", "20", "--inflight", "1", "--duration", d],
         [CONTROL, UNDER_ATTACK], []),
        # A room whose every message is stored (the chat's history) against the same room
        # without it: group commit's throughput, and what a bystander waits behind a burst.
        (CHAT_THROUGHPUT, "deliveries_per_s", True, "broadcast", [*CHAT_ARGS, "--duration", d],
         [CHAT, CHAT_NO_HISTORY], []),
        # The same, the sender's messages in bursts of 1000: the next once all arrived.
        (CHAT_BYSTANDER, "bystander_p99_us", False, "broadcast", [*CHAT_ARGS, "--burst", "--duration", d],
         [CHAT, CHAT_NO_HISTORY], []),
        (CHAT_CLUSTER, "deliveries_per_s", True, "broadcast", [*CHAT_ARGS, "--duration", d],
         [CHAT + "-cluster-1", CHAT_NO_HISTORY + "-cluster-1"], []),
        ("WSS echo 100 x 1 KiB", "msgs_per_s", True, "echo",
         ["--tls", "echo", "--conns", "100", "--size", "1024", "--inflight", "4", "--duration", d],
         ["wsplug"], wss),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--only", help="run only scenarios whose title contains this")
    parser.add_argument("--compare", metavar="HOST",
                        help=f"another host binary: run it as {COMPARE_AS} against wsplug, in {COMPARED} only")
    parser.add_argument("--host", metavar="PATH", help="the host binary wsplug runs (default: the release build)")
    parser.add_argument("--cluster-secret", metavar="TEXT",
                        help="wsplug's clusters authenticate their messages with this secret (not --compare's)")
    parser.add_argument("--echo-plugin", default="echo", metavar="NAME",
                        help="the echo plugin wsplug runs (default echo; a pre-0.3 host with --compare needs echo-raw)")
    args = parser.parse_args()
    global compare_binary, echo_plugin, host_binary, cluster_secret, store_root
    compare_binary, echo_plugin, cluster_secret = args.compare, args.echo_plugin, args.cluster_secret
    host_binary = args.host or host_binary
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory() as tmp:
        store_root = tmp
        certs = os.path.join(tmp, "combined.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-keyout", os.path.join(tmp, "key.pem"), "-out", os.path.join(tmp, "cert.pem")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(certs, "w") as out:
            for part in ("cert.pem", "key.pem"):
                out.write(open(os.path.join(tmp, part)).read())

        results = {}
        chosen = [s for s in scenarios(args.duration, certs) if not args.only or args.only in s[0]]
        if args.compare:
            # Each host against the compared one, clustered as the scenario clusters it.
            def compared(servers):
                clustered = [CLUSTER.match(server) for server in servers if CLUSTER.match(server)]
                if clustered:
                    return [clustered[0][0], f"{COMPARE_AS}-cluster-{clustered[0][2]}"]
                stateless = [STATELESS, COMPARE_AS + STATELESS_SUFFIX] if STATELESS in servers else []
                return ["wsplug", COMPARE_AS, *stateless]
            chosen = [(*s[:5], compared(s[5]), s[6]) for s in chosen if s[0] in COMPARED]
        started = time.monotonic()
        for round_ in range(args.rounds):
            for title, metric, _, mode, wsbench_args, servers, wsplug_extra in chosen:
                # The per-language table is descriptive, not a comparison: one round.
                if title == LANGUAGES and round_ > 0:
                    continue
                # Alternate which server goes first, so drift does not favour one.
                order = servers if round_ % 2 == 0 else list(reversed(servers))
                for server in order:
                    extra = wsplug_extra if server == "wsplug" else []
                    result = measure(server, mode, wsbench_args, extra)
                    value = None if result is None else result.get(metric)
                    results.setdefault((title, server), []).append((value, result))
                    print(f"bench: round {round_ + 1} {title} {server}: {metric}={value}", flush=True)

    print()
    print(f"Medians of {args.rounds} alternating rounds (one for the languages), {args.duration:g} s each; ratio = wsplug / reference "
          f"(for memory, reference / wsplug: above 1 means wsplug is better). Against wsplug-native (the same "
          f"host with a native echo in place of the plugin) the ratio is the plugin's share. Took {time.monotonic() - started:.0f} s.")
    print()
    print("| scenario | server | median | p99 latency (µs) | lost/errors | ratio |")
    print("|---|---|---|---|---|---|")
    for title, metric, higher, _, _, servers, _ in chosen:
        if title == LANGUAGES:
            continue
        medians = {}
        for server in servers:
            values = [v for v, _ in results[(title, server)] if v is not None]
            medians[server] = statistics.median(values) if values else None
        for server in servers:
            runs = [r for _, r in results[(title, server)] if r]
            p99 = statistics.median([r["p99_us"] for r in runs if "p99_us" in r]) if any("p99_us" in r for r in runs) else ""
            bad = problems(runs)
            mine, theirs = medians.get("wsplug", medians.get(servers[0])), medians[server]
            ratio = ""
            if server != servers[0] and mine and theirs:
                ratio = f"{(mine / theirs) if higher else (theirs / mine):.2f}"
            value = "failed" if theirs is None else f"{theirs:,.0f}" if higher else f"{theirs:.2f}"
            print(f"| {title} | {server} | {value} | {p99} | {bad} | {ratio} |")
    if any(title == ATTACK_TITLE for title, *_ in chosen):
        attacks = [r["attacks"] for _, r in results[(ATTACK_TITLE, UNDER_ATTACK)] if r and "attacks" in r]
        if attacks:
            print()
            print(f"Under attack, the attackers' calls that ended (each at its 100 ms deadline, with 1011), "
                  f"median per run of {args.duration:g} s: {statistics.median(attacks):,.0f}.")
    if args.compare:
        print_compared(chosen, results)
        return
    print_targets(chosen, results)
    print_plugin_share(chosen, results)
    if any(title == LANGUAGES for title, *_ in chosen):
        print_languages(results)


def print_compared(chosen, results):
    """Each pair of `--compare`: the ratio of its two hosts round by round (the rounds
    alternate which goes first), as the median and the range."""
    print()
    print(f"Per-round ratios, {COMPARE_AS} as the reference (above 1: this build is better).")
    print()
    print("| scenario | pair | median ratio | range | rounds |")
    print("|---|---|---|---|---|")
    for title, _, higher, _, _, servers, _ in chosen:
        for mine, theirs in zip(servers[::2], servers[1::2]):
            ratios = []
            for (a, _), (b, _) in zip(results[(title, mine)], results[(title, theirs)]):
                if a and b:
                    ratios.append(a / b if higher else b / a)
            if ratios:
                print(f"| {title} | {mine} / {theirs} | {statistics.median(ratios):.3f} | "
                      f"{min(ratios):.3f}-{max(ratios):.3f} | {len(ratios)} |")


def print_plugin_share(chosen, results):
    """The plugin thread's CPU time against the whole host's, where it was measured."""
    rows = []
    for title, _, _, _, wsbench_args, servers, _ in chosen:
        if "--duration" not in wsbench_args:
            continue
        duration = float(wsbench_args[wsbench_args.index("--duration") + 1])
        for server in servers:
            runs = [r for _, r in results.get((title, server), []) if r and "plugin_thread_cpu_s" in r]
            shares = [r["plugin_thread_cpu_s"] / float(r["server_cpu_s"]) for r in runs if float(r.get("server_cpu_s", 0))]
            if shares:
                busy = f"{statistics.median([r['plugin_thread_cpu_s'] for r in runs]) / duration:.2f}"
                rows.append(f"| {title} | {server} | {statistics.median(shares):.2f} | {busy} |")
    if rows:
        print()
        print("The plugin thread's CPU: its share of the host's CPU time, and the cores it kept busy (1.00 is its ceiling).")
        print()
        print("| scenario | server | plugin thread / host CPU | plugin thread busy (cores) |")
        print("|---|---|---|---|")
        for row in rows:
            print(row)


def print_targets(chosen, results):
    """Each target of the scenarios that ran: its bound, what was measured, met or missed,
    for wsplug and, where it ran, for wsplug serving the plugin as stateless."""
    titles = {title: higher for title, _, higher, *_ in chosen}
    # Whose median is measured: wsplug's, or the scenario's first server's (the chat's).
    subject = {title: "wsplug" if "wsplug" in servers else servers[0] for title, _, _, _, _, servers, _ in chosen}
    rows = []
    for title, reference, bound in TARGETS:
        if title not in titles:
            continue
        higher = titles[title]

        def median(server):
            values = [v for v, _ in results.get((title, server), []) if v is not None]
            return statistics.median(values) if values else None

        def judge(mine):
            """What `mine` measures against the target, and whether it meets it."""
            if reference is None:
                return mine, mine is not None and (mine <= bound if not higher else mine >= bound)
            theirs = median(reference)
            measured = None
            if mine and theirs:
                measured = mine / theirs if higher else theirs / mine
            return measured, measured is not None and measured >= bound

        if reference is None:
            target = f"at most {bound:g}" if not higher else f"at least {bound:g}"
        else:
            target = f"at least {bound:g} x {reference}"
        measured, met = judge(median(subject[title]))
        shown = "failed" if measured is None else f"{measured:.2f}"
        stateless = ""
        if median(STATELESS) is not None:
            other, other_met = judge(median(STATELESS))
            stateless = "" if other is None else f"{other:.2f} ({'met' if other_met else 'MISSED'})"
        rows.append((f"| {title} | {target} | {shown} | {'met' if met else 'MISSED'} | {stateless} |", met))
    if rows:
        print()
        print(f"Targets: {sum(met for _, met in rows)} of {len(rows)} met (by wsplug; the last column is "
              f"the same measure for {STATELESS}, where it ran).")
        print()
        print(f"| scenario | target | measured | status | {STATELESS} |")
        print("|---|---|---|---|---|")
        for row, _ in rows:
            print(row)


if __name__ == "__main__":
    main()

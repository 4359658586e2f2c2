#!/usr/bin/env python3
"""How well each proxy spreads load over uneven replicas (issue 34; see docs/benchmarks.md).

Replicas with controlled latency (examples/replica.rs) and one load generator (examples/loadgen.rs: closed
loop, and open loop at a fixed arrival rate with latency from each request's scheduled time) run on core 1;
each proxy runs on core 0 with one worker: fulcrum (round_robin, least_conn, least_time), nginx (round
robin, least_conn) and HAProxy (roundrobin, leastconn), in an order that rotates per scenario and round.

Scenarios:
  even       five replicas at 10 ms (no regression case)
  one_slow   one of five replicas ten times slower (100 ms)
  tower76    ten replicas from 1 ms to 1 s (tower-rs/tower#76's profile)
  cpu_bound  one of three replicas serial at 300 ms a request (one busy worker), the others 5 ms
  fail_fast  one of five replicas answers 503 at once; every proxy retries 503 on another server
  turns_slow one of five turns 20x slower 5 s into the run for 8 s: how long until its share falls under
             10%, and until it is back over 10% after it recovers

Per run: p50, p99, p99.9, throughput, success rate, and each p99 as a ratio to the best of nginx's and
HAProxy's in the same run. Missing nginx/HAProxy are installed from Debian's packages (as root); the
release binary and the two examples are built when missing.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import REPO, find_tools, free_port, machine, pinned_to, wait_port, which  # noqa: E402

PROXY_CORE, LOAD_CORE = "0", "1"
RELEASE = REPO / "target/release"
PROXIES = [
    ("fulcrum", "round_robin"), ("fulcrum", "least_conn"), ("fulcrum", "least_time"),
    ("nginx", "round_robin"), ("nginx", "least_conn"),
    ("haproxy", "roundrobin"), ("haproxy", "leastconn"),
]


def tower76():
    # 1 ms to 1 s in ten steps of equal ratio (x2.15).
    return [(f"r{i}", ["--delay", f"{round(1000 ** (i / 9))}ms"]) for i in range(10)]


# name: (replicas as (name, replica args), closed-loop clients, open-loop rate, tracked replica)
SCENARIOS = {
    "even": ([(f"r{i}", ["--delay", "10ms"]) for i in range(5)], 32, 400, None),
    "one_slow": ([(f"r{i}", ["--delay", "10ms"]) for i in range(4)] + [("slow", ["--delay", "100ms"])],
                 32, 400, "slow"),
    "tower76": (tower76(), 32, 100, "r9"),
    "cpu_bound": ([("a", ["--delay", "5ms"]), ("b", ["--delay", "5ms"]),
                   ("slow", ["--delay", "300ms", "--serial"])], 16, 40, "slow"),
    "fail_fast": ([(f"r{i}", ["--delay", "10ms"]) for i in range(4)] + [("failing", ["--status", "503"])],
                  32, 400, "failing"),
    "turns_slow": ([(f"r{i}", ["--delay", "10ms"]) for i in range(4)]
                   + [("slow", ["--delay", "10ms", "--slow-after", "5s", "--slow-for", "8s",
                                "--slow-delay", "200ms"])], 32, None, "slow"),
}
SLOW_AT_S, RECOVER_AT_S, TURNS_SLOW_SECONDS = 5.0, 13.0, 30


class Process:
    """A child process pinned to `core`, output in its log file, stopped with its process group."""

    def __init__(self, argv, core, log):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([*pinned_to(core), *argv], stdout=self.log, stderr=self.log,
                                     start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_replicas(specs, workdir):
    replicas = []
    for name, extra in specs:
        port = free_port()
        argv = [str(RELEASE / "examples/replica"), "--port", str(port), "--name", name, *extra]
        replicas.append((name, port, Process(argv, LOAD_CORE, workdir / f"replica-{name}.log")))
    for _, port, _ in replicas:
        wait_port(port)
    return replicas


def proxy_config(kind, strategy, port, replicas, workdir):
    """The config file of one proxy in front of `replicas`, retrying 503 on another server."""
    if kind == "fulcrum":
        servers = ",\n".join(f'  {{ addr = "127.0.0.1:{p}" }}' for _, p, _ in replicas)
        text = (f'[global]\nworker_threads = 1\nwatch_config = false\n\n'
                f'[[listener]]\nlisten = "127.0.0.1:{port}"\n\n[[route]]\nupstream = "app"\n\n'
                f'[upstream.app]\nstrategy = "{strategy}"\nkeepalive = 256\n'
                f'retry_on = ["error", "timeout", "http_503"]\nservers = [\n{servers}\n]\n')
        path = workdir / "fulcrum.toml"
        path.write_text(text)
        return [str(RELEASE / "fulcrum"), "run", "-c", str(path)]
    if kind == "nginx":
        servers = "".join(f"        server 127.0.0.1:{p};\n" for _, p, _ in replicas)
        method = "least_conn;" if strategy == "least_conn" else ""
        text = ("daemon off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\n"
                f"pid {workdir}/nginx.pid;\nerror_log {workdir}/nginx-error.log warn;\n"
                "events { worker_connections 10000; }\nhttp {\n    access_log off;\n"
                f"    upstream app {{\n        {method}\n{servers}        keepalive 256;\n    }}\n"
                f"    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n"
                "        location / {\n            proxy_pass http://app;\n"
                "            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n"
                "            proxy_next_upstream error timeout http_503;\n        }\n    }\n}\n")
        path = workdir / "nginx.conf"
        path.write_text(text)
        return [which("nginx"), "-c", str(path), "-e", str(workdir / "nginx-error.log")]
    servers = "".join(f"    server r{i} 127.0.0.1:{p}\n" for i, (_, p, _) in enumerate(replicas))
    text = ("global\n    nbthread 1\ndefaults\n    mode http\n"
            "    timeout connect 3s\n    timeout client 60s\n    timeout server 60s\n"
            "    option http-keep-alive\n    http-reuse always\n    retries 3\n    option redispatch 1\n"
            f"frontend web\n    bind 127.0.0.1:{port}\n    default_backend app\n"
            f"backend app\n    balance {strategy}\n    retry-on conn-failure empty-response 503\n{servers}")
    path = workdir / "haproxy.cfg"
    path.write_text(text)
    return [which("haproxy"), "-f", str(path)]


def loadgen(port, closed=None, rate=None, seconds=8, track=None):
    argv = [*pinned_to(LOAD_CORE), str(RELEASE / "examples/loadgen"), "--url", f"http://127.0.0.1:{port}/",
            "--duration", f"{seconds}s", "--timeout", "30s"]
    argv += ["--closed", str(closed)] if closed else ["--rate", str(rate)]
    if track:
        argv += ["--track", track]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr}")
    return json.loads(out.stdout)


def share_times(series):
    """Seconds from the slow turn until the tracked share is under 10%, and from the recovery until it
    is at 10% or more again (None when it never is)."""
    def share(bucket):
        return bucket["tracked"] / bucket["total"] if bucket["total"] else 0.0
    fell = next((b["t_ms"] / 1000 - SLOW_AT_S for b in series
                 if b["t_ms"] / 1000 >= SLOW_AT_S and share(b) < 0.10), None)
    back = next((b["t_ms"] / 1000 - RECOVER_AT_S for b in series
                 if b["t_ms"] / 1000 >= RECOVER_AT_S and share(b) >= 0.10), None)
    return fell, back


def run_one(scenario, kind, strategy, mode, seconds, workdir, replicas=None):
    specs, clients, rate, track = SCENARIOS[scenario]
    own = replicas is None
    if own:
        replicas = start_replicas(specs, workdir)
    port = free_port()
    proxy = Process(proxy_config(kind, strategy, port, replicas, workdir), PROXY_CORE,
                    workdir / f"{kind}-{strategy}.log")
    try:
        wait_port(port)
        if scenario != "turns_slow":
            loadgen(port, closed=8, seconds=1)  # warm-up: connections, first samples
        if mode == "closed":
            return loadgen(port, closed=clients, seconds=seconds, track=track)
        return loadgen(port, rate=rate, seconds=seconds, track=track)
    finally:
        proxy.stop()
        if own:
            for _, _, process in replicas:
                process.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario names")
    parser.add_argument("--modes", default="closed,open", help="closed, open or both")
    parser.add_argument("--seconds", type=int, default=8, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", default=str(REPO / "target/spread.json"), help="where the raw results go")
    args = parser.parse_args()
    find_tools()
    needed = [RELEASE / "fulcrum", RELEASE / "examples/replica", RELEASE / "examples/loadgen"]
    if not all(p.exists() for p in needed):
        print("building the release binary and examples (a few minutes)", flush=True)
        build = ["cargo", "build", "--release", "--bin", "fulcrum", "--example", "replica", "--example", "loadgen"]
        if subprocess.run(build, cwd=REPO).returncode != 0:
            sys.exit("cargo build --release failed")
    workdir = REPO / "target/spread"
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} on {machine()}", flush=True)
    results = []
    for rnd in range(args.rounds):
        for s_index, scenario in enumerate(args.scenarios.split(",")):
            modes = ["closed"] if scenario == "turns_slow" else args.modes.split(",")
            seconds = TURNS_SLOW_SECONDS if scenario == "turns_slow" else args.seconds
            for mode in modes:
                shift = (rnd + s_index) % len(PROXIES)
                order = PROXIES[shift:] + PROXIES[:shift]
                # One set of replicas per scenario and mode; turns_slow restarts its replicas per run so
                # the slow window falls at the same point of every run.
                shared = None if scenario == "turns_slow" else start_replicas(SCENARIOS[scenario][0], workdir)
                try:
                    for kind, strategy in order:
                        res = run_one(scenario, kind, strategy, mode, seconds, workdir, shared)
                        res.update(scenario=scenario, mode=mode, proxy=kind, strategy=strategy, round=rnd)
                        if scenario == "turns_slow":
                            res["fell_s"], res["back_s"] = share_times(res["series"] or [])
                        results.append(res)
                        print(f"{scenario:10} {mode:6} {kind:8} {strategy:11} p50 {fmt(res['p50_ms'])} "
                              f"p99 {fmt(res['p99_ms'])} p99.9 {fmt(res['p999_ms'])} "
                              f"{res['throughput']:7.1f} req/s ok {100 * res['success']:.2f}%"
                              + (f" fell {fmt(res['fell_s'])} s back {fmt(res['back_s'])} s"
                                 if scenario == "turns_slow" else ""), flush=True)
                finally:
                    for _, _, process in shared or []:
                        process.stop()
    Path(args.json).write_text(json.dumps(results, indent=1))
    print()
    print(table(results))


def fmt(value):
    return "-" if value is None else f"{value:.1f}"


def table(results):
    """Markdown: medians over rounds per scenario, mode, proxy and strategy, with each p99 as a ratio to
    the best p99 of nginx's and HAProxy's strategies in the same scenario and mode."""
    rows = ["| scenario | load | proxy | strategy | p50 ms | p99 ms | p99.9 ms | req/s | success | p99 / best reference |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = []
    for r in results:
        key = (r["scenario"], r["mode"])
        if key not in keys:
            keys.append(key)
    for scenario, mode in keys:
        runs = [r for r in results if r["scenario"] == scenario and r["mode"] == mode]
        refs = [med(runs, k, s, "p99_ms") for k, s in PROXIES if k != "fulcrum"]
        best = min((v for v in refs if v is not None), default=None)
        for kind, strategy in PROXIES:
            p99 = med(runs, kind, strategy, "p99_ms")
            extra = ""
            if scenario == "turns_slow":
                extra = f" (share <10% after {fmt(med(runs, kind, strategy, 'fell_s'))} s, back after {fmt(med(runs, kind, strategy, 'back_s'))} s)"
            rows.append(f"| {scenario} | {mode} | {kind} | {strategy} | {fmt(med(runs, kind, strategy, 'p50_ms'))} | "
                        f"{fmt(p99)} | {fmt(med(runs, kind, strategy, 'p999_ms'))} | "
                        f"{fmt(med(runs, kind, strategy, 'throughput'))} | "
                        f"{100 * (med(runs, kind, strategy, 'success') or 0):.2f}% | "
                        f"{'-' if not (p99 and best) else f'{p99 / best:.2f}x'}{extra} |")
    return "\n".join(rows)


def med(runs, kind, strategy, key):
    values = sorted(r[key] for r in runs if r["proxy"] == kind and r["strategy"] == strategy
                    and r.get(key) is not None)
    return values[len(values) // 2] if values else None


if __name__ == "__main__":
    main()

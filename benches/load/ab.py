#!/usr/bin/env python3
"""Paired A/B of two or more fulcrum builds (or environment variants of one) under the same load.

For a step whose instruction count (instructions.py) and CPU time may disagree, e.g. one that trades
instructions for cache misses. Each variant runs as its own fulcrum process (the load comparison's config,
one worker, pinned to the proxy core) behind the same three nginx backends; wrk (on the load core) drives
them in turn, the order alternating every round, and each round's CPU per request (from /proc, as
compare.py measures it) is compared between variants run seconds apart. On this noisy VM whole runs drift
by 10-15%; a paired ratio per round, and its median over many rounds, is steadier than two runs' medians.

    python3 benches/load/ab.py --variant target/release/fulcrum --variant /tmp/fulcrum-other
    python3 benches/load/ab.py --variant target/release/fulcrum --variant target/release/fulcrum,SOME_ENV=1
    python3 benches/load/ab.py --header "Connection: close" --variant A --variant B   # compare.py's close
    python3 benches/load/ab.py --worker-threads 2 --unpinned --variant A --variant B
    python3 benches/load/ab.py --variant target/release/fulcrum --variant target/release/fulcrum,@protocol=h2c

`--worker-threads N` runs each fulcrum with that many serving threads; `--unpinned` lets every process
(fulcrum, wrk, the backends) run on any core, as a proxy with a thread per core does in production (its
CPU per request then includes what sharing the cores with the load costs it).

A variant is a binary path, optionally followed by comma-separated NAME=VALUE environment settings and
@KEY=VALUE settings of its upstream pool (`[upstream.app]` in its config; a string value is quoted). With
`@protocol=h2c` (or `h2`) the variant's servers are the backends' HTTP/2 (prior knowledge) ports: the
backend nginx listens on three more ports with `http2` for it. With `@https=1` they are its three TLS
ports (HTTP/1.1 over TLS, `tls_verify = false` against the run's self-signed certificate).

Prints per variant the median CPU us/request (and its user part), requests/s and p99, and each
variant's paired CPU ratio to the first.
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import tempfile
from pathlib import Path

from compare import (LOAD_CORE, Proxy, cpu_ticks, free_port, make_certificate, parse_duration_ms, pinned_to,
                     render, wait_port, which)


def run_wrk(port, connections, seconds, headers=(), unpinned=False, path="/"):
    """(requests, p99 ms) of one wrk run against `port` for `path`, sending `headers` ("Name: value")
    too."""
    url = f"http://127.0.0.1:{port}{path}"
    extra = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run([*pinned_to(LOAD_CORE, unpinned), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "--latency", *extra, url], capture_output=True, text=True, check=True).stdout
    requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    p99 = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("99%"))
    return requests, parse_duration_ms(p99)


def add_http2_listeners(config, ports):
    """Makes the backend nginx config at `config` also listen on `ports` for HTTP/2 by prior knowledge."""
    text = config.read_text()
    last_listen = text.rindex("        listen ")
    end = text.index("\n", last_listen) + 1
    extra = "".join(f"        listen 127.0.0.1:{port} http2 reuseport backlog=4096;\n" for port in ports)
    config.write_text(text[:end] + extra + text[end:])


def add_tls_listeners(config, ports, workdir):
    """Makes the backend nginx config at `config` also listen on `ports` with TLS (the run's certificate)."""
    text = config.read_text()
    last_listen = text.rindex("        listen ")
    end = text.index("\n", last_listen) + 1
    extra = "".join(f"        listen 127.0.0.1:{port} ssl reuseport backlog=4096;\n" for port in ports)
    extra += f"        ssl_certificate {workdir}/cert.pem;\n        ssl_certificate_key {workdir}/key.pem;\n"
    config.write_text(text[:end] + extra + text[end:])


def with_pool_settings(config, pool):
    """`config` (the rendered fulcrum.toml) with each KEY=VALUE of `pool` set in `[upstream.app]`: a key the
    template already has is replaced, any other added."""
    head, section = config.split("[upstream.app]\n", 1)
    for key, value in pool.items():
        line = f"{key} = {toml_value(value)}"
        section, replaced = re.subn(rf"^{re.escape(key)} = .*$", lambda _: line, section, count=1,
                                    flags=re.MULTILINE)
        if not replaced:
            section = line + "\n" + section
    return head + "[upstream.app]\n" + section


def toml_value(value):
    """`value` as written in TOML: numbers and booleans as they are, anything else a quoted string."""
    if value in ("true", "false") or value.lstrip("-").isdigit():
        return value
    return '"' + value.replace('"', '\\"') + '"'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True,
                    help="BINARY[,NAME=VALUE...][,@KEY=VALUE...]")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--worker-threads", type=int, default=1)
    ap.add_argument("--path", default="/", help="what wrk asks for: / (a short answer), /10k.bin or /1m.bin")
    ap.add_argument("--unpinned", action="store_true", help="no taskset: every process on any core")
    ap.add_argument("--header", action="append", default=[],
                    help='a header wrk sends, e.g. "Connection: close" for a new connection per request')
    args = ap.parse_args()
    if len(args.variant) < 2:
        ap.error("give at least two --variant")
    work = Path(tempfile.mkdtemp(prefix="fulcrum-ab-"))
    work.chmod(0o755)  # nginx's workers (another user) read the files below
    (work / "www").mkdir()
    (work / "www/10k.bin").write_bytes(os.urandom(10 * 1024))
    (work / "www/1m.bin").write_bytes(os.urandom(1024 * 1024))
    make_certificate(work)
    ports = [free_port() for _ in range(3)]
    values = {"dir": str(work), "port1": ports[0], "port2": ports[1], "port3": ports[2],
              "fulcrum_strategy": "round_robin"}
    render("nginx-backend.conf", work / "nginx-backend.conf", values)
    h2_ports = [free_port() for _ in range(3)]
    add_http2_listeners(work / "nginx-backend.conf", h2_ports)
    tls_ports = [free_port() for _ in range(3)]
    add_tls_listeners(work / "nginx-backend.conf", tls_ports, work)
    backend = subprocess.Popen([*pinned_to(LOAD_CORE, args.unpinned), which("nginx"), "-c",
                                str(work / "nginx-backend.conf"), "-e", str(work / "backend-error.log")],
                               start_new_session=True)
    proxies = []
    try:
        for port in ports + h2_ports + tls_ports:
            wait_port(port)
        for i, variant in enumerate(args.variant):
            binary, *settings = variant.split(",")
            pool = dict(setting[1:].split("=", 1) for setting in settings if setting.startswith("@"))
            env = dict(os.environ, **dict(setting.split("=", 1) for setting in settings
                                          if not setting.startswith("@")))
            plain, tls = free_port(), free_port()
            variant_values = dict(values, plain=plain, tls=tls)
            https = pool.pop("https", None) == "1"
            if pool.get("protocol") in ("h2", "h2c"):
                variant_values.update(port1=h2_ports[0], port2=h2_ports[1], port3=h2_ports[2])
            if https:
                variant_values.update(port1=tls_ports[0], port2=tls_ports[1], port3=tls_ports[2])
                pool["tls_verify"] = "false"
            config = render("fulcrum.toml", work / f"fulcrum-{i}.toml", variant_values)
            text = config.read_text().replace("worker_threads = 1", f"worker_threads = {args.worker_threads}")
            if https:
                text = text.replace('{ addr = "127.0.0.1:', '{ addr = "https://127.0.0.1:')
            config.write_text(with_pool_settings(text, pool))
            proxy = Proxy(f"fulcrum-{i}", [binary, "run", "-c", str(config)], plain, tls, work, env=env,
                          pinned=not args.unpinned)
            proxies.append((variant, proxy))
            proxy.start()
        results = {variant: [] for variant in args.variant}
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        for round_ in range(args.rounds):
            order = proxies if round_ % 2 == 0 else proxies[::-1]
            for variant, proxy in order:
                # Warm-up: pooled connections, caches.
                run_wrk(proxy.plain, args.connections, 1, args.header, args.unpinned, args.path)
                pids = proxy.pids()
                user0, sys0 = cpu_ticks(pids)
                requests, p99 = run_wrk(proxy.plain, args.connections, args.seconds, args.header, args.unpinned,
                                        args.path)
                user1, sys1 = cpu_ticks(pids)
                cpu = (user1 - user0 + sys1 - sys0) * tick_us / requests
                user = (user1 - user0) * tick_us / requests
                results[variant].append((cpu, requests / args.seconds, p99, user))
            print(f"round {round_ + 1}: " + ", ".join(
                f"{v}: {results[v][-1][0]:.1f} us/req" for v in args.variant), flush=True)
        first = args.variant[0]
        for variant in args.variant:
            runs = results[variant]
            line = (f"{variant}: CPU {statistics.median(r[0] for r in runs):.2f} us/req "
                    f"(user {statistics.median(r[3] for r in runs):.2f}), "
                    f"{statistics.median(r[1] for r in runs):.0f} req/s, p99 {statistics.median(r[2] for r in runs):.2f} ms")
            if variant != first:
                ratios = [r[0] / f[0] for r, f in zip(runs, results[first])]
                line += (f"; paired CPU ratio to the first: median {statistics.median(ratios):.3f}, "
                         f"{sum(r < 1 for r in ratios)} of {len(ratios)} rounds lower")
            print(line)
    finally:
        for _, proxy in proxies:
            proxy.stop()
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Cache hits and compressed answers: fulcrum against nginx on one machine (see docs/benchmarks.md).

Two scenarios, each proxy with one worker pinned to core 0, one backend nginx and wrk on core 1, the
proxies run in turn with the order alternating every round:

- `cache_hit`: GET of a 10 KB page that both proxies hold in their cache (nginx `proxy_cache` with its
  cache directory on /dev/shm, fulcrum's `[cache.pages]` in memory) after a warm-up.
- `gzip_json`: GET of a 50 KB JSON document with `Accept-Encoding: gzip`, compressed by both at their
  default level (nginx `gzip on; gzip_comp_level 1`); `br_json` and `zstd_json`: the same through
  fulcrum with `Accept-Encoding: br` and `zstd` (nginx has neither), for what they cost and save.

Prints per scenario and proxy the median CPU us/request, requests/s, p99 and the bytes of one answer,
and fulcrum's paired CPU ratio to nginx in the same rounds.

    python3 benches/load/cache_compress.py [--rounds 5] [--seconds 5] [--binary target/release/fulcrum]
"""

import argparse
import gzip
import http.client
import json
import os
import signal
import statistics
import subprocess
import tempfile
from pathlib import Path

from compare import (CLK_TCK, LOAD_CORE, Proxy, cpu_ticks, free_port, make_certificate, pinned_to, run_wrk,
                     wait_port, which)

BACKEND = """daemon off;
master_process on;
worker_processes 1;
pid {dir}/backend.pid;
error_log {dir}/backend-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    types {{ text/html html; application/json json; }}
    server {{
        listen 127.0.0.1:{backend} reuseport backlog=4096;
        root {dir}/www;
    }}
}}
"""

NGINX = """daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/nginx-proxy.pid;
error_log {dir}/nginx-proxy-error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    proxy_cache_path {cache_dir} levels=1:2 keys_zone=pages:10m max_size=256m inactive=60m use_temp_path=off;
    upstream app {{
        server 127.0.0.1:{backend};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{plain} backlog=4096;
        listen 127.0.0.1:{tls} ssl backlog=4096;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /cache/ {{
            proxy_pass http://app;
            proxy_cache pages;
            proxy_cache_valid 200 10m;
        }}
        location /json/ {{
            proxy_pass http://app;
            gzip on;
            gzip_types application/json;
            gzip_min_length 1k;
            gzip_comp_level 1;
        }}
    }}
}}
"""

FULCRUM = """[global]
worker_threads = 1
watch_config = false

[[listener]]
name = "plain"
listen = "127.0.0.1:{plain}"

[[listener]]
name = "tls"
listen = "127.0.0.1:{tls}"
[[listener.tls.certificates]]
cert = "{dir}/cert.pem"
key = "{dir}/key.pem"

[cache.pages]
max_size = "256m"
max_entry_size = "8m"

[compression]
enabled = true
algorithms = ["zstd", "br", "gzip"]
types = ["application/json"]
min_size = "1k"

[[route]]
path = "/cache/"
upstream = "app"
cache = "pages"
cache_valid = {{ "200" = "10m" }}
compress = false

[[route]]
path = "/json/"
upstream = "app"

[upstream.app]
keepalive = 1024
servers = [{{ addr = "127.0.0.1:{backend}" }}]
"""

# name: (path, Accept-Encoding or None, proxies)
SCENARIOS = {
    "cache_hit": ("/cache/page.html", None, ["nginx", "fulcrum"]),
    "gzip_json": ("/json/data.json", "gzip", ["nginx", "fulcrum"]),
    "br_json": ("/json/data.json", "br", ["fulcrum"]),
    "zstd_json": ("/json/data.json", "zstd", ["fulcrum"]),
}


def write_content(www):
    (www / "cache").mkdir(parents=True)
    (www / "json").mkdir()
    page = ("<!doctype html><title>page</title>\n" + "".join(
        f"<p>Paragraph {i}: the quick brown fox jumps over the lazy dog {i * 7919 % 1000}.</p>\n"
        for i in range(200)))[:10 * 1024]
    (www / "cache/page.html").write_text(page)
    records, text = [], ""
    i = 0
    while len(text) < 50 * 1024:
        records.append({"id": i, "name": f"user-{i}", "email": f"user{i}@example.com",
                        "active": i % 3 != 0, "score": (i * 7919) % 1000 / 10, "tags": ["a", "b", str(i % 17)]})
        text = json.dumps(records)
        i += 1
    (www / "json/data.json").write_text(text)
    return (www / "json/data.json").read_bytes()


def fetch(port, path, encoding):
    """(status, headers, body) of one GET."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Accept-Encoding": encoding} if encoding else {}
    conn.request("GET", path, headers=headers)
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, body


def measure(proxy, path, encoding, connections, seconds):
    extra = ["-H", f"Accept-Encoding: {encoding}"] if encoding else []
    pids = proxy.pids()
    before = cpu_ticks(pids)
    result = run_wrk(f"http://127.0.0.1:{proxy.plain}{path}", connections, seconds, extra)
    after = cpu_ticks(pids)
    requests = max(result["requests"], 1)
    result["cpu_us_per_req"] = sum(a - b for a, b in zip(after, before)) / CLK_TCK * 1e6 / requests
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(Path(__file__).resolve().parents[2] / "target/release/fulcrum"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fulcrum-cache-"))
    work.chmod(0o755)
    cache_dir = Path(tempfile.mkdtemp(prefix="nginx-cache-", dir="/dev/shm"))
    os.chmod(cache_dir, 0o777)
    data = write_content(work / "www")
    make_certificate(work)
    backend_port = free_port()
    values = {"dir": work, "backend": backend_port, "cache_dir": cache_dir}
    (work / "backend.conf").write_text(BACKEND.format(**values))
    backend = subprocess.Popen([*pinned_to(LOAD_CORE), which("nginx"), "-c", str(work / "backend.conf"),
                                "-e", str(work / "backend-error.log")], start_new_session=True)
    proxies = {}
    try:
        wait_port(backend_port)
        for name in ("nginx", "fulcrum"):
            plain, tls = free_port(), free_port()
            v = dict(values, plain=plain, tls=tls)
            if name == "nginx":
                (work / "nginx.conf").write_text(NGINX.format(**v))
                argv = [which("nginx"), "-c", str(work / "nginx.conf"), "-e", str(work / "nginx-error.log")]
            else:
                (work / "fulcrum.toml").write_text(FULCRUM.format(**v))
                argv = [args.binary, "run", "-c", str(work / "fulcrum.toml")]
            proxies[name] = Proxy(name, argv, plain, tls, work).start()
        # Each answer once, checked: the cache answers the page, the JSON decodes to the backend's bytes.
        sizes = {}
        for scenario in args.scenarios.split(","):
            path, encoding, names = SCENARIOS[scenario]
            for name in names:
                for _ in range(2):
                    status, headers, body = fetch(proxies[name].plain, path, encoding)
                assert status == 200, f"{name} {path}: {status}"
                if encoding:
                    assert headers.get("content-encoding") == encoding, f"{name} {scenario}: {headers}"
                if encoding == "gzip":
                    assert gzip.decompress(body) == data, f"{name}: the gzip answer decodes to the document"
                if scenario == "cache_hit" and name == "fulcrum":
                    assert headers.get("x-cache-status") == "HIT", f"fulcrum's second GET: {headers}"
                sizes[(scenario, name)] = len(body)
        results = {}
        for round_ in range(args.rounds):
            for scenario in args.scenarios.split(","):
                path, encoding, names = SCENARIOS[scenario]
                order = names if round_ % 2 == 0 else names[::-1]
                for name in order:
                    measure(proxies[name], path, encoding, args.connections, 1)  # warm-up
                    res = measure(proxies[name], path, encoding, args.connections, args.seconds)
                    results.setdefault((scenario, name), []).append(res)
                    print(f"{scenario} round {round_ + 1} {name}: {res['cpu_us_per_req']:.1f} us/req, "
                          f"{res['rps']:.0f} req/s, errors {res['errors']}", flush=True)
        print()
        print(f"identity size of the JSON document: {len(data)} bytes")
        print("| scenario | proxy | req/s | p99 ms | CPU us/req | paired CPU ratio to nginx | bytes per answer |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for scenario in args.scenarios.split(","):
            for name in SCENARIOS[scenario][2]:
                runs = results[(scenario, name)]
                cpu = statistics.median(r["cpu_us_per_req"] for r in runs)
                ratio = ""
                if name != "nginx" and (scenario, "nginx") in results:
                    ratios = [r["cpu_us_per_req"] / n["cpu_us_per_req"]
                              for r, n in zip(runs, results[(scenario, "nginx")])]
                    ratio = f"{statistics.median(ratios):.3f} ({sum(x < 1 for x in ratios)} of {len(ratios)} lower)"
                print(f"| {scenario} | {name} | {statistics.median(r['rps'] for r in runs):.0f} | "
                      f"{statistics.median(r['p99_ms'] for r in runs):.2f} | {cpu:.1f} | {ratio} | "
                      f"{sizes[(scenario, name)]} |")
    finally:
        for proxy in proxies.values():
            proxy.stop()
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait()
        subprocess.run(["rm", "-rf", str(cache_dir)], check=False)


if __name__ == "__main__":
    main()

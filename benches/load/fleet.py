#!/usr/bin/env python3
"""Fleet rate-limit benchmark: three fulcrum processes sharing one Redis zone (see docs/benchmarks-fleet.md).

Starts, on loopback only: one redis-server, one nginx backend (`return 200`), and three fulcrum processes
whose catch-all route has the zone `api` (`rate` r/s per client key, burst rate/10, nodelay, backend = "redis",
on_redis_error = "local", fleet_size = 3, redis_timeout = 50ms). A small asyncio client (keep-alive
connections, paced) then:

1. measures the latency of the backend alone and through a proxy (requests under the limit, fresh keys),
   so the latency a proxy adds is the difference;
2. floods one client key at `factor` times the limit, spread over the three proxies, for `seconds`:
   admitted requests per second against the configured rate, Redis script commands per second (INFO
   commandstats), latency p50/p99;
3. floods again, and stops Redis with SIGSTOP at one third of the run and resumes it with SIGCONT at two
   thirds: answers other than 200/429 (failures beyond the policy), admitted rate and p99 in each part
   (the outage part skips its first second, while the breaker opens).

Every loop is bounded in count and time, and everything it started is ended when it stops.

    python3 benches/load/fleet.py                       # target/debug/fulcrum (built when missing)
    python3 benches/load/fleet.py --binary target/release/fulcrum --rate 200 --seconds 15
"""

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import free_port, wait_port  # noqa: E402


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5)
    return out.stdout


def script_calls(port):
    calls = 0
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            for field in line.split(":", 1)[1].split(","):
                if field.startswith("calls="):
                    calls += int(field[6:])
    return calls


async def one_request(reader, writer, key):
    writer.write(f"GET / HTTP/1.1\r\nHost: fleet.test\r\nx-client: {key}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def paced(ports, total_rate, seconds, key_of, on_reply, workers=16):
    """Sends `total_rate` requests per second for `seconds`, round-robin over `ports`, from `workers`
    keep-alive connections; calls on_reply(t_sent, status, latency_s) for each."""
    start = time.monotonic()
    count = int(total_rate * seconds)
    interval = 1.0 / total_rate
    next_index = 0

    async def worker(w):
        nonlocal next_index
        port = ports[w % len(ports)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                i = next_index
                if i >= count:
                    return
                next_index += 1
                due = start + i * interval
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.monotonic()
                try:
                    status = await asyncio.wait_for(one_request(reader, writer, key_of(i)), 5)
                except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    status = 0
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                on_reply(sent - start, status, time.monotonic() - sent)
        finally:
            writer.close()

    await asyncio.gather(*(worker(w) for w in range(workers)))
    return time.monotonic() - start


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def ms(seconds):
    return f"{seconds * 1000:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(ROOT / "target/debug/fulcrum"))
    parser.add_argument("--rate", type=int, default=50, help="the zone's limit per client key, r/s")
    parser.add_argument("--burst", type=int, default=None, help="the zone's burst (default rate / 10)")
    parser.add_argument("--factor", type=int, default=10, help="flood at this many times the limit")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each flood")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-cli", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"fleet.py: {tool} missing; apt-get install -y redis-server redis-tools nginx")
    burst = args.rate // 10 if args.burst is None else args.burst
    binary = Path(args.binary)
    if not binary.exists():
        subprocess.run(["cargo", "build", "--bin", "fulcrum"], cwd=ROOT, check=True)

    work = Path(tempfile.mkdtemp(prefix="fulcrum-fleet-"))
    procs = []
    try:
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL)
        procs.append(redis)
        backend_port = free_port()
        (work / "nginx.conf").write_text(
            f"daemon off; master_process off; worker_processes 1; pid {work}/nginx.pid;\n"
            f"error_log {work}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n"
            f"http {{ access_log off; keepalive_requests 10000000; server {{ listen 127.0.0.1:{backend_port};\n"
            f"location = / {{ return 200 \"ok\\n\"; }} }} }}\n")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(subprocess.Popen([nginx, "-c", str(work / "nginx.conf"), "-p", str(work)],
                                      stderr=subprocess.DEVNULL))
        proxy_ports = []
        for i in range(3):
            port = free_port()
            proxy_ports.append(port)
            config = work / f"fulcrum{i}.toml"
            config.write_text(
                f"[[listener]]\nlisten = \"127.0.0.1:{port}\"\n\n[[route]]\npath = \"/\"\nupstream = \"app\"\n"
                f"rate_limit = [\"api\"]\n\n[rate_limit.api]\nkey = \"header:x-client\"\nrate = \"{args.rate}r/s\"\n"
                f"burst = {burst}\nnodelay = true\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\n"
                f"on_redis_error = \"local\"\nfleet_size = 3\nredis_timeout = \"50ms\"\n\n"
                f"[upstream.app]\nservers = [{{ addr = \"127.0.0.1:{backend_port}\" }}]\n")
            procs.append(subprocess.Popen([str(binary), "run", "--config", str(config)],
                                          stdout=subprocess.DEVNULL, stderr=open(work / f"fulcrum{i}.log", "w")))
        for port in [redis_port, backend_port, *proxy_ports]:
            wait_port(port)

        low = max(args.rate // 2, 10)

        def latencies(ports, key_of):
            lat = []
            asyncio.run(paced(ports, low, 3, key_of, lambda t, s, l: lat.append(l), workers=4))
            return lat

        direct = latencies([backend_port], lambda i: "d")
        through = latencies(proxy_ports, lambda i: f"fresh-{i}")
        print(f"backend alone: p50 {ms(pct(direct, .5))} ms, p99 {ms(pct(direct, .99))} ms")
        print(f"through a proxy (Redis zone, under the limit): p50 {ms(pct(through, .5))} ms, "
              f"p99 {ms(pct(through, .99))} ms; added p50 {ms(pct(through, .5) - pct(direct, .5))} ms")

        flood_rate = args.rate * args.factor

        def flood(key, events=None):
            replies = []
            calls_before = script_calls(redis_port)

            async def run():
                tasks = []
                if events:
                    for at, action in events:
                        tasks.append(asyncio.get_running_loop().call_later(at, action))
                elapsed = await paced(proxy_ports, flood_rate, args.seconds, lambda i: key,
                                      lambda t, s, l: replies.append((t, s, l)), workers=24)
                return elapsed

            elapsed = asyncio.run(run())
            return replies, elapsed, calls_before

        replies, elapsed, before = flood("flood")
        calls = script_calls(redis_port) - before
        admitted = sum(1 for _, s, _ in replies if s == 200)
        other = sum(1 for _, s, _ in replies if s not in (200, 429))
        lat = [l for _, _, l in replies]
        print(f"flood at {flood_rate} r/s for {elapsed:.1f} s: {len(replies)} requests, admitted "
              f"{admitted / elapsed:.1f} r/s (configured {args.rate}), {calls / elapsed:.1f} Redis commands/s, "
              f"p50 {ms(pct(lat, .5))} ms, p99 {ms(pct(lat, .99))} ms, other answers {other}")

        third = args.seconds / 3
        events = [(third, lambda: os.kill(redis.pid, signal.SIGSTOP)),
                  (2 * third, lambda: os.kill(redis.pid, signal.SIGCONT))]
        replies, elapsed, before = flood("outage", events)
        os.kill(redis.pid, signal.SIGCONT)
        parts = {
            "before (Redis up)": (0, third),
            "outage, breaker open (after its first second)": (third + 1.0, 2 * third),
            "after SIGCONT": (2 * third, args.seconds + 5),
        }
        other = sum(1 for _, s, _ in replies if s not in (200, 429))
        print(f"flood with Redis stopped mid-run: {len(replies)} requests, answers other than 200/429: {other}")
        for name, (a, b) in parts.items():
            part = [(s, l) for t, s, l in replies if a <= t < b]
            span = max(min(b, elapsed) - a, 1e-9)
            admitted = sum(1 for s, _ in part if s == 200)
            print(f"  {name}: admitted {admitted / span:.1f} r/s, p50 {ms(pct([l for _, l in part], .5))} ms, "
                  f"p99 {ms(pct([l for _, l in part], .99))} ms")
    finally:
        for proc in procs:
            try:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side load comparison of fulcrum, nginx and HAProxy on one machine (see docs/benchmarks.md).

Every proxy gets one worker pinned to core 0 (`taskset -c 0`); the backends (one nginx worker serving three
ports) and wrk share core 1. Each scenario runs the proxies in turn, rotating who goes first, for several
rounds; the table shows medians and each figure as a ratio to nginx measured in the same run.

Per run: requests/s and p50/p99 latency (wrk --latency), proxy CPU microseconds per request (utime+stime of
every process of the proxy from /proc, before and after), and the proxy's peak RSS during the run (sampled).
Separately: RSS at idle and with 10,000 idle keep-alive client connections.

Missing nginx, HAProxy or wrk are installed from Debian's packages (as root; `--no-install` only prints the
command), and a missing target/release/fulcrum is built first.
"""

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PROXY_CORE = "0"
LOAD_CORE = "1"

# name, wrk connections, path, extra wrk args, tls
SCENARIOS = {
    "ka64": (64, "/", [], False),
    "ka256": (256, "/", [], False),
    "close": (64, "/", ["-H", "Connection: close"], False),
    "body10k": (64, "/10k.bin", [], False),
    "body1m": (16, "/1m.bin", [], False),
    "tls_ka64": (64, "/", [], True),
    "tls_close": (64, "/", ["-H", "Connection: close"], True),
}
LEAST_CONN_SCENARIOS = {"least_conn_ka64": SCENARIOS["ka64"]}
DIRECT_SCENARIOS = ["ka64", "ka256", "close", "body10k", "body1m"]
# haproxy.cfg's maxconn fits a 20,000-descriptor limit; it needs two per connection.
HAPROXY_MAX_IDLE = 9_900


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def render(template, out, values):
    text = Template((HERE / template).read_text()).substitute(values)
    out.write_text(text)
    return out


def process_tree(pid):
    """The pid and all its descendants (nginx's master and worker)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return pids


def cpu_ticks(pids):
    """(user, system) clock ticks of these processes so far."""
    user = system = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user, system


def rss_bytes(pids):
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total


def pinned_to(cores, unpinned=False):
    """The command prefix that runs a process on `cores` (`taskset`), or nothing when `unpinned`."""
    return [] if unpinned else ["taskset", "-c", cores]


class Proxy:
    """A proxy process pinned to the proxy core (unless `pinned` is false), its output in NAME.log."""

    def __init__(self, name, argv, plain, tls, workdir, env=None, pinned=True):
        self.name, self.argv, self.plain, self.tls = name, argv, plain, tls
        self.env, self.pinned = env, pinned
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = None

    def start(self):
        """Starts it and waits for both its ports; if it does not listen, the error carries its log."""
        self.proc = subprocess.Popen(
            [*pinned_to(PROXY_CORE, unpinned=not self.pinned), *self.argv],
            stdout=self.log,
            stderr=self.log,
            env=self.env,
            start_new_session=True,
        )
        try:
            wait_port(self.plain)
            wait_port(self.tls)
        except RuntimeError as error:
            self.log.flush()
            raise RuntimeError(f"{self.name} did not start ({error}); {self.log_path}:\n"
                               f"{self.log_path.read_text()}") from None
        time.sleep(0.3)  # let worker processes settle before the idle reading
        return self

    def pids(self):
        return process_tree(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def parse_duration_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url, connections, seconds, extra):
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    out = subprocess.run([*argv, *extra, url], capture_output=True, text=True, check=True).stdout
    result = {"raw": out}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    result["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = parse_duration_ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    result["errors"] = errors
    return result


def measure(proxy, scenario, seconds, port_of):
    connections, path, extra, tls = SCENARIOS.get(scenario) or LEAST_CONN_SCENARIOS[scenario]
    scheme, port = ("https", proxy.tls) if tls else ("http", port_of(proxy))
    pids = proxy.pids() if proxy.proc else []
    peak = [rss_bytes(pids)]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.25):
            peak[0] = max(peak[0], rss_bytes(pids))

    sampler = threading.Thread(target=sample, daemon=True)
    before = cpu_ticks(pids)
    sampler.start()
    result = run_wrk(f"{scheme}://127.0.0.1:{port}{path}", connections, seconds, extra)
    stop.set()
    sampler.join()
    after = cpu_ticks(pids)
    requests = max(result["requests"], 1)
    per_request = [(a - b) / CLK_TCK * 1e6 / requests if pids else float("nan") for a, b in zip(after, before)]
    result["cpu_user_us_per_req"], result["cpu_sys_us_per_req"] = per_request
    result["cpu_us_per_req"] = sum(per_request)
    result["peak_rss_mb"] = peak[0] / 1e6 if pids else float("nan")
    del result["raw"]
    return result


async def hold_idle_connections(port, count):
    """Opens `count` keep-alive connections, makes one request on each, and returns them still open."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    conns, sem = [], asyncio.Semaphore(256)

    async def one():
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"content-length:\s*(\d+)", head, re.I)
            if m:
                await reader.readexactly(int(m.group(1)))
            conns.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    return conns


def idle_memory(proxy, count):
    idle = rss_bytes(proxy.pids())
    if proxy.name == "haproxy":
        count = min(count, HAPROXY_MAX_IDLE)

    async def run():
        conns = await hold_idle_connections(proxy.plain, count)
        await asyncio.sleep(1.0)
        held = rss_bytes(proxy.pids())
        for w in conns:
            w.close()
        return held, len(conns)

    held, opened = asyncio.run(run())
    return {"idle_rss_mb": idle / 1e6, "rss_10k_idle_conns_mb": held / 1e6, "connections": opened}


def make_certificate(workdir):
    key, cert = workdir / "key.pem", workdir / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    (workdir / "combined.pem").write_text(cert.read_text() + key.read_text())


# The tools the comparison runs, and the Debian package each comes from.
TOOL_PACKAGES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk", "taskset": "util-linux",
                 "openssl": "openssl"}


def missing_tools():
    return [t for t in TOOL_PACKAGES if not Path(which(t)).exists()]


def find_tools(install=True):
    """Finds nginx, HAProxy, wrk, taskset and openssl; installs the missing ones from Debian's packages
    (`apt-get`, as root) unless `install` is false, and exits with the command to run if it cannot."""
    missing = missing_tools()
    if not missing:
        return
    packages = sorted({TOOL_PACKAGES[t] for t in missing})
    command = ["apt-get", "install", "-y", "-qq", *packages]
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {', '.join(packages)} (missing {', '.join(missing)})", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # A fresh machine's package lists may be empty or stale: update once, then install.
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(command, env=env, check=False)
        missing = missing_tools()
    if missing:
        sys.exit(f"missing {', '.join(missing)}: {' '.join(command)}")


def build_release(binary):
    """Builds the release binary when `binary` is this repository's and not there yet."""
    if Path(binary).exists():
        return
    if Path(binary).resolve() != (REPO / "target/release/fulcrum").resolve():
        sys.exit(f"{binary} not found")
    print("building target/release/fulcrum (cargo build --release; a few minutes)", flush=True)
    if subprocess.run(["cargo", "build", "--release", "--bin", "fulcrum"], cwd=REPO).returncode != 0:
        sys.exit("cargo build --release failed")


def which(tool):
    return shutil.which(tool) or f"/usr/sbin/{tool}"


def start_proxies(workdir, values, strategy, binary, only):
    nginx_strategy = {"round_robin": "", "least_conn": "least_conn;"}[strategy]
    haproxy_strategy = {"round_robin": "roundrobin", "least_conn": "leastconn"}[strategy]
    v = dict(values, fulcrum_strategy=strategy, nginx_strategy=nginx_strategy,
             haproxy_strategy=haproxy_strategy)
    proxies = []
    ports = {}
    try:
        start_each(workdir, v, binary, only, proxies, ports)
    except BaseException:
        for proxy in proxies:
            proxy.stop()
        raise
    return proxies


def start_each(workdir, v, binary, only, proxies, ports):
    for name in only:
        plain, tls = free_port(), free_port()
        ports[name] = (plain, tls)
        pv = dict(v, plain=plain, tls=tls)
        if name == "fulcrum":
            cfg = render("fulcrum.toml", workdir / "fulcrum.toml", pv)
            argv = [str(binary), "run", "-c", str(cfg)]
        elif name == "nginx":
            cfg = render("nginx-proxy.conf", workdir / "nginx-proxy.conf", pv)
            argv = [which("nginx"), "-c", str(cfg), "-e", str(workdir / "nginx-proxy-error.log")]
        else:
            cfg = render("haproxy.cfg", workdir / "haproxy.cfg", pv)
            argv = [which("haproxy"), "-db", "-f", str(cfg)]
        proxy = Proxy(name, argv, plain, tls, workdir)
        proxies.append(proxy)
        proxy.start()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--scenarios", default=",".join([*SCENARIOS, *LEAST_CONN_SCENARIOS]))
    ap.add_argument("--proxies", default="fulcrum,nginx,haproxy")
    ap.add_argument("--idle-connections", type=int, default=10_000, help="0 skips the memory check")
    ap.add_argument("--nginx-keepalive", type=int, default=1024,
                    help="nginx's upstream keepalive cache (64 is the figure the performance issue quotes)")
    ap.add_argument("--binary", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--out", default=str(REPO / "target/load"))
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install missing tools; print the command and stop")
    args = ap.parse_args()

    find_tools(install=not args.no_install)
    build_release(args.binary)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    workdir = Path(args.out)
    (workdir / "www").mkdir(parents=True, exist_ok=True)
    (workdir / "www/10k.bin").write_bytes(os.urandom(10 * 1024))
    (workdir / "www/1m.bin").write_bytes(os.urandom(1024 * 1024))
    make_certificate(workdir)

    ports = [free_port() for _ in range(3)]
    values = {"dir": str(workdir), "port1": ports[0], "port2": ports[1], "port3": ports[2],
              "nginx_keepalive": args.nginx_keepalive}
    render("nginx-backend.conf", workdir / "nginx-backend.conf", values)
    backend = subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, which("nginx"), "-c", str(workdir / "nginx-backend.conf"),
         "-e", str(workdir / "backend-error.log")],
        start_new_session=True,
    )
    names = args.proxies.split(",")
    wanted = args.scenarios.split(",")
    results = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "seconds": args.seconds,
               "rounds": args.rounds, "runs": {}, "memory": {}}
    try:
        for p in ports:
            wait_port(p)
        groups = [("round_robin", [s for s in wanted if s in SCENARIOS]),
                  ("least_conn", [s for s in wanted if s in LEAST_CONN_SCENARIOS])]
        for strategy, scenarios in groups:
            if not scenarios:
                continue
            proxies = start_proxies(workdir, values, strategy, args.binary, names)
            try:
                for scenario in scenarios:
                    for r in range(args.rounds):
                        order = proxies[r % len(proxies):] + proxies[: r % len(proxies)]
                        if scenario in DIRECT_SCENARIOS:
                            order = order + [Direct(ports[0])]
                        for proxy in order:
                            res = measure(proxy, scenario, args.seconds, lambda p: p.plain)
                            results["runs"].setdefault(scenario, {}).setdefault(proxy.name, []).append(res)
                            print(f"{scenario} round {r + 1} {proxy.name}: {short(res)}", flush=True)
            finally:
                for proxy in proxies:
                    proxy.stop()
        if args.idle_connections:
            # Fresh processes: memory a load run left in an allocator's free lists is not idle memory.
            proxies = start_proxies(workdir, values, "round_robin", args.binary, names)
            try:
                for proxy in proxies:
                    results["memory"][proxy.name] = idle_memory(proxy, args.idle_connections)
                    print(f"memory {proxy.name}: {results['memory'][proxy.name]}", flush=True)
            finally:
                for proxy in proxies:
                    proxy.stop()
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait()
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (workdir / "results.md").write_text(table)
    print(table)


class Direct:
    """The direct-to-backend row: wrk against one backend port, no proxy (no CPU or RSS figures)."""

    name = "direct"
    proc = None

    def __init__(self, port):
        self.plain = port
        self.tls = port

    def pids(self):
        return []


def short(res):
    return (f"{res['rps']:.0f} req/s p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms "
            f"cpu {res['cpu_us_per_req']:.1f} us/req (user {res['cpu_user_us_per_req']:.1f}) rss {res['peak_rss_mb']:.1f} MB errors {res['errors']}")


def machine():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores, {cpu}, kernel {os.uname().release}"


def median(runs, key):
    values = [r[key] for r in runs if r[key] == r[key]]
    return statistics.median(values) if values else float("nan")


def ratio(value, ref):
    if ref != ref or value != value or ref == 0:
        return ""
    return f" ({value / ref:.2f}x)"


def markdown(results):
    lines = [f"Run {results['date']} on {results['machine']}; {results['rounds']} rounds of "
             f"{results['seconds']} s per proxy and scenario, medians; ratios are to nginx in the same run.", ""]
    lines.append("| scenario | proxy | req/s | p50 ms | p99 ms | CPU us/req | of it user | peak RSS MB | errors |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for scenario, by_proxy in results["runs"].items():
        ref = by_proxy.get("nginx")
        for name, runs in by_proxy.items():
            rps, p50, p99 = median(runs, "rps"), median(runs, "p50_ms"), median(runs, "p99_ms")
            cpu, rss = median(runs, "cpu_us_per_req"), median(runs, "peak_rss_mb")
            errors = sum(r["errors"] for r in runs)
            cells = [
                f"{rps:.0f}" + (ratio(rps, median(ref, "rps")) if ref else ""),
                f"{p50:.2f}" + (ratio(p50, median(ref, "p50_ms")) if ref else ""),
                f"{p99:.2f}" + (ratio(p99, median(ref, "p99_ms")) if ref else ""),
                "-" if cpu != cpu else f"{cpu:.1f}" + (ratio(cpu, median(ref, "cpu_us_per_req")) if ref else ""),
                "-" if cpu != cpu else f"{median(runs, 'cpu_user_us_per_req'):.1f}",
                "-" if rss != rss else f"{rss:.1f}" + (ratio(rss, median(ref, "peak_rss_mb")) if ref else ""),
                str(errors),
            ]
            lines.append(f"| {scenario} | {name} | " + " | ".join(cells) + " |")
    lines += paired(results)
    if results["memory"]:
        lines += ["", "| proxy | idle RSS MB | idle keep-alive client connections held | RSS with them MB |",
                  "| --- | --- | --- | --- |"]
        ref = results["memory"].get("nginx")
        for name, m in results["memory"].items():
            idle, held = m["idle_rss_mb"], m["rss_10k_idle_conns_mb"]
            lines.append(
                f"| {name} | {idle:.1f}{ratio(idle, ref['idle_rss_mb']) if ref else ''} | {m['connections']:,} | "
                f"{held:.1f}{ratio(held, ref['rss_10k_idle_conns_mb']) if ref else ''} |"
            )
    return "\n".join(lines) + "\n"


def paired(results):
    """Fulcrum against each reference round by round (they ran seconds apart, in the same state of this
    noisy host): the median of the per-round ratios, and in how many rounds fulcrum met the target."""
    lines = ["", "Paired by round (fulcrum / reference per round; median, and rounds where fulcrum's figure is "
             "lower for CPU and p99, not lower for req/s):", "",
             "| scenario | against | CPU us/req | p99 ms | req/s |", "| --- | --- | --- | --- | --- |"]
    rows = 0
    for scenario, by_proxy in results["runs"].items():
        ours = by_proxy.get("fulcrum")
        for ref_name in ("nginx", "haproxy"):
            ref = by_proxy.get(ref_name)
            if not ours or not ref or len(ours) != len(ref):
                continue
            cells = []
            for key, better in (("cpu_us_per_req", lambda r: r < 1), ("p99_ms", lambda r: r <= 1),
                                ("rps", lambda r: r >= 1)):
                ratios = [a[key] / b[key] for a, b in zip(ours, ref) if b[key]]
                if not ratios:
                    cells.append("-")
                    continue
                cells.append(f"{statistics.median(ratios):.3f}x ({sum(map(better, ratios))} of {len(ratios)})")
            lines.append(f"| {scenario} | {ref_name} | " + " | ".join(cells) + " |")
            rows += 1
    return lines if rows else []


if __name__ == "__main__":
    main()

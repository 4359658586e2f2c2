#!/usr/bin/env python3
"""Slow readers against fulcrum (buffering on, and off) and nginx (proxy_buffering on), in the same run
(see docs/benchmarks.md, "Slow clients").

Each proxy is the load comparison's (one worker, benches/load/fulcrum.toml and nginx-proxy.conf) in front of
the same nginx backend. For each answer size, `--clients` slow readers connect (SO_RCVBUF 4 KiB), send one
GET and read only the first 64 bytes, then hold their connection. Once the count settles (unchanged for
1.5 s, at most 20 s), the run records:

- upstream connections held: connections between the proxy and the backend whose answer the proxy has not
  taken whole (the backend still has bytes to send, or the proxy has bytes unread), from `ss`;
- the proxy's RSS (every process of it), against its RSS before the clients came;
- for fulcrum, its temp-file bytes (`/status` needs the admin API; the count comes from /proc/PID/fd).

Sizes: 1 MB (the issue's; on a kernel whose socket send buffer grows to 4 MB, as here, the kernel itself takes
a 1 MB answer off the backend whatever the proxy does) and 16 MB (past what the socket buffers take).

    python3 benches/load/slow_clients.py                          # target/release/fulcrum, built when missing
    python3 benches/load/slow_clients.py --clients 200 --sizes 1m,16m
"""

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (REPO, Proxy, build_release, find_tools, free_port, make_certificate,  # noqa: E402
                     render, rss_bytes, wait_port, which)

SIZES = {"1m": 1 << 20, "16m": 16 << 20}


def held_upstream_connections(backend_ports):
    """Connections to the backend whose answer is not yet taken whole by the proxy."""
    out = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True, text=True,
                         check=True).stdout
    held = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        recv_q, send_q, local, peer = int(fields[0]), int(fields[1]), fields[2], fields[3]
        local_port, peer_port = int(local.rsplit(":", 1)[1]), int(peer.rsplit(":", 1)[1])
        if local_port in backend_ports and send_q > 0:
            held.add((peer_port, local_port))  # the backend still sends
        elif peer_port in backend_ports and recv_q > 0:
            held.add((local_port, peer_port))  # the proxy has not read it all
    return len(held)


async def slow_reader(port, path, ready):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    got = b""
    while len(got) < 64:
        chunk = await loop.sock_recv(sock, 64 - len(got))
        if not chunk:
            break
        got += chunk
    ready.append(got.startswith(b"HTTP/1.1 200"))
    return sock


def temp_file_bytes(pids):
    """Bytes in the deleted temp files the processes hold open."""
    total = 0
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                    if "(deleted)" in target and not target.startswith("/memfd"):
                        total += os.stat(fd).st_size
                except OSError:
                    pass
        except OSError:
            pass
    return total


def run_one(proxy, size_name, clients, backend_ports):
    before = rss_bytes(proxy.pids())

    async def run():
        ready = []
        socks = await asyncio.gather(*(slow_reader(proxy.plain, f"/{size_name}.bin", ready)
                                       for _ in range(clients)))
        samples, started = [], time.time()
        while time.time() - started < 20:
            samples.append(held_upstream_connections(backend_ports))
            if len(samples) >= 4 and len(set(samples[-4:])) == 1:
                break
            await asyncio.sleep(0.5)
        result = {
            "answers_started": sum(ready),
            "upstream_held": samples[-1],
            "rss_mb": rss_bytes(proxy.pids()) / 1e6,
            "rss_growth_mb": (rss_bytes(proxy.pids()) - before) / 1e6,
            "temp_file_mb": temp_file_bytes(proxy.pids()) / 1e6,
            "settle_s": round(time.time() - started, 1),
        }
        for s in socks:
            s.close()
        return result

    return asyncio.run(run())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--sizes", default="1m,16m")
    ap.add_argument("--binary", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--out", default=str(REPO / "target/slow-clients"))
    args = ap.parse_args()

    find_tools(install=True)
    build_release(args.binary)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    workdir = Path(args.out)
    (workdir / "www").mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    sizes = args.sizes.split(",")
    for name in sizes:
        (workdir / f"www/{name}.bin").write_bytes(os.urandom(SIZES[name]))
    make_certificate(workdir)
    ports = [free_port() for _ in range(3)]
    values = {"dir": str(workdir), "port1": ports[0], "port2": ports[1], "port3": ports[2],
              "nginx_keepalive": 1024, "fulcrum_strategy": "round_robin", "nginx_strategy": "",
              "haproxy_strategy": "roundrobin"}
    render("nginx-backend.conf", workdir / "nginx-backend.conf", values)
    backend = subprocess.Popen([which("nginx"), "-c", str(workdir / "nginx-backend.conf"),
                                "-e", str(workdir / "backend-error.log")], start_new_session=True)
    results = []
    try:
        for p in ports:
            wait_port(p)
        for variant in ["fulcrum", "fulcrum buffering=false", "nginx"]:
            for size in sizes:
                plain, tls = free_port(), free_port()
                pv = dict(values, plain=plain, tls=tls)
                if variant.startswith("fulcrum"):
                    cfg = render("fulcrum.toml", workdir / "fulcrum.toml", pv)
                    text = cfg.read_text().replace("watch_config = false",
                                                   f"watch_config = false\ntemp_path = \"{workdir}/tmp\"")
                    if "buffering=false" in variant:
                        text = text.replace('upstream = "app"\n', 'upstream = "app"\nbuffering = false\n')
                    cfg.write_text(text)
                    argv = [str(args.binary), "run", "-c", str(cfg)]
                else:
                    cfg = render("nginx-proxy.conf", workdir / "nginx-proxy.conf", pv)
                    text = cfg.read_text().replace("proxy_buffering on;",
                                                   f"proxy_buffering on;\n            proxy_temp_path {workdir}/tmp;")
                    cfg.write_text(text)
                    argv = [which("nginx"), "-c", str(cfg), "-e", str(workdir / "nginx-proxy-error.log")]
                proxy = Proxy(variant.split()[0], argv, plain, tls, workdir, pinned=False).start()
                try:
                    res = run_one(proxy, size, args.clients, set(ports))
                finally:
                    proxy.stop()
                res.update(proxy=variant, size=size)
                print(res, flush=True)
                results.append(res)
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait()
    print(f"\n{args.clients} slow readers each (read 64 bytes, then nothing), {time.strftime('%Y-%m-%d')}\n")
    print("| proxy | answer | upstream connections held | RSS (MB) | RSS growth (MB) | temp files (MB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['proxy']} | {r['size']} | {r['upstream_held']} | {r['rss_mb']:.1f} | "
              f"{r['rss_growth_mb']:.1f} | {r['temp_file_mb']:.0f} |")


if __name__ == "__main__":
    main()

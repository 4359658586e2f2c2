#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind (see docs/benchmarks.md).

Unlike CPU time on a noisy VM, an instruction count repeats to within a fraction of a percent for the
same binary and load, so it measures a code change even while the machine is busy. It leaves out the
kernel (system calls, loopback TCP) and cache effects: the load comparison (compare.py) measures those.

The same three nginx backends as compare.py; fulcrum (`--binary`, one worker, the load comparison's
config) runs under `valgrind --tool=callgrind`; wrk warms it up, the counters are zeroed, wrk runs again
and the counters are dumped. Prints instructions per request and the functions that cost the most.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from compare import HERE, REPO, free_port, make_certificate, render, wait_port, which


def self_costs(path):
    """Self cost (Ir) per function name from a callgrind output file."""
    names, costs = {}, collections.Counter()
    function, after_call = None, False
    for line in Path(path).read_text(errors="replace").splitlines():
        named = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
        if named:
            if named.group(3):
                names[named.group(2)] = named.group(3)
            if named.group(1) == "fn":
                function = named.group(2)
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if len(fields) >= 2 and not after_call:
                costs[names.get(function, function)] += int(fields[1])
            after_call = False
    return costs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--path", default="/", help="what wrk asks for: / (a short answer), /10k.bin or /1m.bin")
    args = ap.parse_args()
    for tool in ("nginx", "wrk", "valgrind", "callgrind_control"):
        which(tool)
    work = Path(tempfile.mkdtemp(prefix="fulcrum-instructions-"))
    work.chmod(0o755)  # nginx's workers (another user) read the files below
    (work / "www").mkdir()
    (work / "www/10k.bin").write_bytes(os.urandom(10 * 1024))
    (work / "www/1m.bin").write_bytes(os.urandom(1024 * 1024))
    make_certificate(work)
    ports = [free_port() for _ in range(3)]
    values = {"dir": str(work), "port1": ports[0], "port2": ports[1], "port3": ports[2],
              "plain": free_port(), "tls": free_port(), "fulcrum_strategy": "round_robin"}
    render("nginx-backend.conf", work / "nginx-backend.conf", values)
    render("fulcrum.toml", work / "fulcrum.toml", values)
    backend = subprocess.Popen([which("nginx"), "-c", str(work / "nginx-backend.conf"),
                                "-e", str(work / "backend-error.log")], start_new_session=True)
    out = work / "callgrind.out"
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                              args.binary, "run", "-c", str(work / "fulcrum.toml")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in ports:
            wait_port(port)
        wait_port(values["plain"], timeout=60)
        url = f"http://127.0.0.1:{values['plain']}{args.path}"
        wrk = [which("wrk"), "-t1", f"-c{args.connections}"]
        subprocess.run([*wrk, "-d3s", url], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
        run = subprocess.run([*wrk, f"-d{args.seconds}s", url], check=True, capture_output=True, text=True)
        subprocess.run(["callgrind_control", "-d", str(proxy.pid)], check=True, capture_output=True)
        requests = int(re.search(r"(\d+) requests in", run.stdout).group(1))
        if "Non-2xx" in run.stdout:
            sys.exit(f"wrk saw answers other than 2xx/3xx:\n{run.stdout}")
    finally:
        proxy.terminate()
        proxy.wait()
        backend.terminate()
        backend.wait()
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        sys.exit("callgrind wrote no dump")
    costs = self_costs(dumps[-1])
    total = sum(costs.values())
    print(f"{requests} requests, {total:,} instructions: {total / requests:,.0f} per request")
    for name, cost in costs.most_common(args.top):
        print(f"{cost / requests:9,.0f}  {100 * cost / total:5.1f}%  {name[:140]}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind (see docs/benchmarks.md).

Unlike CPU time on a noisy VM, an instruction count repeats to within a fraction of a percent for the
same binary and load, so it measures a code change even while the machine is busy. It leaves out the
kernel (system calls, loopback TCP) and cache effects: the load comparison (compare.py) measures those.

The same three nginx backends as compare.py; fulcrum (`--binary`, one worker, the load comparison's
config) runs under `valgrind --tool=callgrind`; wrk warms it up, the counters are zeroed, wrk runs again
and the counters are dumped. Prints instructions per request and the functions that cost the most.

`--proxy nginx` measures the reference instead (one worker, `master_process off`, the load comparison's
config). `--cache` adds callgrind's cache and branch simulation with this project's VM's geometry (32 KiB
first-level instruction cache, 48 KiB data, 2 MiB last level) and prints misses per request.
`--atomics` counts locked (atomic read-modify-write) instructions per request, in the proxy's binary and
in libc, by function: callgrind's per-instruction counts matched against `objdump -d`.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from compare import REPO, free_port, make_certificate, render, wait_port, which


def self_costs(path):
    """Self cost (Ir) per function name from a callgrind output file."""
    names, costs = {}, collections.Counter()
    function, after_call = None, False
    positions = 1  # "line", or "instr line" with --dump-instr=yes
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith("positions:"):
            positions = len(line.split()) - 1
            continue
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
            if len(fields) > positions and not after_call:
                costs[names.get(function, function)] += int(fields[positions])
            after_call = False
    return costs


# This project's VM (Intel Xeon, 2 cores): L1i 32 KiB 8-way, L1d 48 KiB 12-way, L2 2 MiB 16-way.
CACHE_GEOMETRY = ["--I1=32768,8,64", "--D1=49152,12,64", "--LL=2097152,16,64"]
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def totals(path):
    """Event names and program totals of a callgrind output file."""
    text = Path(path).read_text(errors="replace")
    events = re.search(r"^events: (.*)$", text, re.M).group(1).split()
    summary = re.search(r"^(?:summary|totals): (.*)$", text, re.M).group(1).split()
    return dict(zip(events, map(int, summary)))


def instruction_costs(path):
    """Ir per (object, address) and the function of each address, from a `--dump-instr=yes` file."""
    names, objects = {}, {}
    cost, function_of = collections.Counter(), {}
    obj = function = None
    address, after_call = 0, False
    for line in Path(path).read_text(errors="replace").splitlines():
        named = re.match(r"(ob|fn|cob|cfn|fl|fi|fe|cfi|cfl)=\((\d+)\)(?: (.*))?$", line)
        if named:
            kind, index, name = named.groups()
            table = objects if kind in ("ob", "cob") else names if kind in ("fn", "cfn") else None
            if table is not None and name:
                table[index] = name
            if kind == "ob":
                obj = objects[index]
            elif kind == "fn":
                function = names[index]
            continue
        if line.startswith("calls="):
            after_call = True
            continue
        if not line or line[0] not in "0123456789+-*":
            continue
        fields = line.split()
        if fields[0].startswith("0x"):
            address = int(fields[0], 16)
        elif fields[0][0] in "+-":
            address += int(fields[0])
        if after_call:  # the call's inclusive cost, not this instruction's
            after_call = False
            continue
        if len(fields) >= 3:
            cost[(obj, address)] += int(fields[2])
            function_of[(obj, address)] = function
    return cost, function_of


def locked_addresses(binary):
    """Addresses of the locked instructions in `binary` (a lock prefix, or xchg with memory)."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary],
                             capture_output=True, text=True, check=True).stdout
    found = set()
    for line in listing.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)$", line)
        if m and (m.group(2).startswith("lock ") or re.match(r"xchg\s+\S*\(", m.group(2))
                  or re.match(r"xchg\s+%\w+,\S*\(", m.group(2))):
            found.add(int(m.group(1), 16))
    return found


def symbol_addresses(binary):
    """Start address of each (demangled) function name in `binary`, static symbols then dynamic ones."""
    found = {}
    for dynamic in ([], ["-D"]):
        listing = subprocess.run(["nm", "-C", *dynamic, binary], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3 and parts[1] in "tTwWiI":
                found.setdefault(parts[2].split("@")[0], int(parts[0], 16))
    return found


def load_address(obj, cost, function_of, binary):
    """Where `binary` was loaded: a function's first instruction always runs, so the lowest address
    counted for it is its start; the first function whose symbol agrees (page-aligned) gives the base."""
    symbols = symbol_addresses(binary)
    lowest = {}
    for (o, address), function in function_of.items():
        if o == obj and function in symbols:
            lowest[function] = min(address, lowest.get(function, address))
    busiest = collections.Counter()
    for (o, address), c in cost.items():
        if o == obj:
            busiest[function_of[(o, address)]] += c
    for function, _ in busiest.most_common():
        if function in lowest and (lowest[function] - symbols[function]) % 4096 == 0:
            return lowest[function] - symbols[function]
    return None


def print_atomics(path, binary, requests):
    """Locked instructions per request in `binary` and libc, by function."""
    cost, function_of = instruction_costs(path)
    for obj_path in (binary, LIBC):
        obj = next((o for (o, _) in cost if o and Path(o).name == Path(obj_path).name), None)
        base = load_address(obj, cost, function_of, obj_path) if obj else None
        if base is None:
            print(f"{obj_path}: no load address found")
            continue
        locked = locked_addresses(obj_path)
        by_function = collections.Counter()
        for (o, address), c in cost.items():
            if o == obj and address - base in locked:
                by_function[function_of[(o, address)]] += c
        total = sum(by_function.values())
        print(f"{total / requests:.1f} locked instructions per request in {obj_path}")
        for function, c in by_function.most_common(25):
            if c / requests >= 0.5:
                print(f"{c / requests:7.1f}  {function[:130]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(REPO / "target/release/fulcrum"))
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--path", default="/", help="what wrk asks for: / (a short answer), /10k.bin or /1m.bin")
    ap.add_argument("--proxy", choices=["fulcrum", "nginx"], default="fulcrum")
    ap.add_argument("--header", action="append", default=[],
                    help='a header wrk sends, e.g. "Connection: close" for a new connection per request')
    ap.add_argument("--cache", action="store_true", help="simulate caches and branches; misses per request")
    ap.add_argument("--atomics", action="store_true", help="count locked instructions per request")
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
              "plain": free_port(), "tls": free_port(), "fulcrum_strategy": "round_robin",
              "nginx_strategy": "", "nginx_keepalive": 1024}
    render("nginx-backend.conf", work / "nginx-backend.conf", values)
    if args.proxy == "nginx":
        config = render("nginx-proxy.conf", work / "nginx-proxy.conf", values)
        config.write_text(config.read_text().replace("master_process on;", "master_process off;"))
        binary = which("nginx")
        command = [binary, "-c", str(config), "-e", str(work / "nginx-proxy-error.log")]
    else:
        render("fulcrum.toml", work / "fulcrum.toml", values)
        binary = args.binary
        command = [binary, "run", "-c", str(work / "fulcrum.toml")]
    tool = []
    if args.cache:
        tool += ["--cache-sim=yes", "--branch-sim=yes", *CACHE_GEOMETRY]
    if args.atomics:
        tool += ["--dump-instr=yes"]
    backend = subprocess.Popen([which("nginx"), "-c", str(work / "nginx-backend.conf"),
                                "-e", str(work / "backend-error.log")], start_new_session=True)
    out = work / "callgrind.out"
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *tool,
                              *command],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in ports:
            wait_port(port)
        wait_port(values["plain"], timeout=60)
        url = f"http://127.0.0.1:{values['plain']}{args.path}"
        wrk = [which("wrk"), "-t1", f"-c{args.connections}", *(a for h in args.header for a in ("-H", h))]
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
    print(f"{args.proxy}: {requests} requests, {total:,} instructions: {total / requests:,.0f} per request")
    if args.cache:
        for event, count in totals(dumps[-1]).items():
            print(f"{event:>6} {count / requests:10,.1f} per request")
    if args.atomics:
        print_atomics(dumps[-1], binary, requests)
    for name, cost in costs.most_common(args.top):
        print(f"{cost / requests:9,.0f}  {100 * cost / total:5.1f}%  {name[:140]}")


if __name__ == "__main__":
    main()

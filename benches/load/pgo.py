#!/usr/bin/env python3
"""Makes a profile-guided optimised (PGO) build of fulcrum: an opt-in release build (docs/operations.md).

Builds fulcrum instrumented (`-Cprofile-generate`, in target/pgo-generate), runs it behind the load
comparison's nginx backends, drives it with a training mix, merges the counts into
`target/pgo-data/fulcrum.profdata`, then builds the binary with that profile under the `pgo` cargo profile
(`-Cprofile-use`, in target/pgo-build): the result is `target/pgo-build/pgo/fulcrum`. `cargo build
--release` never uses a profile: it depends only on tracked sources. Nothing here is committed; run it
again after changing the code (a function whose code changed loses its profile).

The training mix is deliberately not the load comparison's traffic: browser-like GETs over several paths
with the usual request fields, POSTs with bodies, a new connection per request, 10 KB and 1 MB answers,
TLS, and a least_conn pool; each for a few seconds. The profile is sparse: code the mix never ran keeps no
profile and is optimised as it would be without one (HTTP/2, WebSocket tunnels, reloads, health checks).

    python3 benches/load/pgo.py        # about 15 minutes: two release builds, 30 s of load, merge
    python3 benches/load/compare.py --binary target/pgo-build/pgo/fulcrum   # measure it
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from compare import (LOAD_CORE, REPO, free_port, make_certificate, render, start_proxies, wait_port, which)

# A wrk script: GETs over several paths with the fields a browser sends.
BROWSER_LIKE = """
local paths = {"/", "/api/items?page=2&sort=name", "/static/app.js", "/10k.bin", "/", "/search?q=load+balancer"}
local headers = {
  ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
  ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
  ["Accept-Encoding"] = "gzip, deflate, br",
  ["Accept-Language"] = "en-GB,en;q=0.9",
  ["Cookie"] = "session=3f2a9c0e4b1d; theme=dark",
  ["Referer"] = "https://example.com/",
}
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], headers)
end
"""

# A wrk script: POSTs of a 1 KB form body.
POSTS = """
wrk.method = "POST"
wrk.body = string.rep("field=value&", 85)
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""


def llvm_profdata():
    """The llvm-profdata of the rustc that builds fulcrum (rustup's llvm-tools component)."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    found = sorted(Path(sysroot).glob("lib/rustlib/*/bin/llvm-profdata"))
    if not found:
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=True)
        found = sorted(Path(sysroot).glob("lib/rustlib/*/bin/llvm-profdata"))
    if not found:
        sys.exit("llvm-profdata not found: rustup component add llvm-tools")
    return found[0]



def wrk(url, connections, seconds, script=None, extra=()):
    argv = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", *extra]
    if script:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    requests = next(line for line in out.splitlines() if "requests in" in line).split()[0]
    print(f"  {url} {' '.join(extra)} {script.name if script else ''}: {requests} requests", flush=True)


def train(binary, work, seconds):
    (work / "www").mkdir()
    (work / "www/10k.bin").write_bytes(os.urandom(10 * 1024))
    (work / "www/1m.bin").write_bytes(os.urandom(1024 * 1024))
    (work / "browser.lua").write_text(BROWSER_LIKE)
    (work / "posts.lua").write_text(POSTS)
    make_certificate(work)
    ports = [free_port() for _ in range(3)]
    values = {"dir": str(work), "port1": ports[0], "port2": ports[1], "port3": ports[2],
              "nginx_keepalive": 1024}
    render("nginx-backend.conf", work / "nginx-backend.conf", values)
    backend = subprocess.Popen(["taskset", "-c", LOAD_CORE, which("nginx"), "-c", str(work / "nginx-backend.conf"),
                                "-e", str(work / "backend-error.log")], start_new_session=True)
    try:
        for port in ports:
            wait_port(port)
        for strategy in ("round_robin", "least_conn"):
            [proxy] = start_proxies(work, values, strategy, binary, ["fulcrum"])
            plain, tls = f"http://127.0.0.1:{proxy.plain}", f"https://127.0.0.1:{proxy.tls}"
            try:
                wrk(f"{plain}/", 64, seconds, work / "browser.lua")
                if strategy == "least_conn":
                    continue
                wrk(f"{plain}/", 200, seconds, work / "browser.lua")
                wrk(f"{plain}/", 32, seconds, work / "posts.lua")
                wrk(f"{plain}/", 32, seconds, extra=["-H", "Connection: close"])
                wrk(f"{plain}/1m.bin", 8, seconds)
                wrk(f"{tls}/", 32, seconds, work / "browser.lua")
                wrk(f"{tls}/", 16, seconds, extra=["-H", "Connection: close"])
            finally:
                proxy.stop()  # SIGTERM: fulcrum drains and exits, which writes its counts
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3, help="length of each part of the training mix")
    ap.add_argument("--profile-only", action="store_true",
                    help="record target/pgo-data/fulcrum.profdata, do not build with it")
    args = ap.parse_args()
    profdata = llvm_profdata()
    target = REPO / "target/pgo-generate"
    build_counts = target / "build-counts"  # build scripts and proc macros write theirs here
    env = dict(os.environ, RUSTFLAGS=f"-Cprofile-generate={build_counts}")
    env.pop("RUSTC_WRAPPER", None)
    subprocess.run(["cargo", "build", "--release", "--target-dir", str(target)], cwd=REPO, env=env, check=True)
    work = Path(tempfile.mkdtemp(prefix="fulcrum-pgo-"))
    work.chmod(0o755)  # nginx's workers (another user) read the files below
    counts = work / "counts"
    os.environ["LLVM_PROFILE_FILE"] = str(counts / "fulcrum-%p-%m.profraw")
    train(target / "release/fulcrum", work, args.seconds)
    raw = sorted(counts.glob("*.profraw"))
    if not raw:
        sys.exit(f"fulcrum wrote no counts into {counts}")
    out = REPO / "target/pgo-data/fulcrum.profdata"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(profdata), "merge", "--sparse", "-o", str(out), *map(str, raw)], check=True)
    print(f"wrote {out} ({out.stat().st_size} bytes) from {len(raw)} count files")
    shutil.rmtree(work, ignore_errors=True)
    if args.profile_only:
        return
    # Its own target directory: cargo does not see a changed profile file, so this one is rebuilt whole.
    built = REPO / "target/pgo-build"
    shutil.rmtree(built, ignore_errors=True)
    env = dict(os.environ, RUSTFLAGS=f"-Cprofile-use={out}")
    env.pop("RUSTC_WRAPPER", None)
    subprocess.run(["cargo", "build", "--profile", "pgo", "--bin", "fulcrum", "--target-dir", str(built)],
                   cwd=REPO, env=env, check=True)
    print(f"built {built / 'pgo/fulcrum'} with the profile")


if __name__ == "__main__":
    main()

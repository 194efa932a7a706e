#!/usr/bin/env python3
"""
One command to compare txsockproxy with the socket proxies installed here.

Runs the vendored proxybench harness (bench/proxybench/, stdlib Python plus
two small C programs compiled with gcc at start-up) with txsockproxy
(C{twistd sockproxy} from this interpreter's environment) and every one of
haproxy, nginx (stream), lighttpd (mod_sockproxy) and socat found on PATH,
side by side, interleaved round by round: bulk throughput (1 and 8
connections, both directions), connection rate, ping-pong latency, memory
per idle session and peak memory with a slow reader.

    python bench/compare.py                 # quick smoke run, ~2-3 min
    python bench/compare.py --full          # 3 rounds, ~15-20 min
    python bench/compare.py --full --also twisted   # add Twisted's portforward
    python bench/compare.py -- --scenarios bulk,rr  # anything after -- goes to proxybench

Needs Linux, gcc, and this project installed (C{pip install -e .}).  Only
127.0.0.1 is used; only processes it started are signalled.  The markdown
report goes to stdout and, with the raw JSON, to --out (default
bench/results/).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.join(HERE, "proxybench", "proxybench.py")
PEERS = {"haproxy": "haproxy", "nginx": "nginx", "lighttpd": "lighttpd", "socat": "socat"}


def txsockproxyCommand() -> str:
    """
    The proxybench command template that runs this environment's txsockproxy.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(twistd):
        twistd = shutil.which("twistd") or "twistd"
    return (
        f"txsockproxy={shlex.quote(twistd)} -n --pidfile= sockproxy"
        " --listen tcp:{listen}:interface=127.0.0.1"
        " --backend tcp:host=127.0.0.1:port={backend}"
    )


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--full", action="store_true", help="3 rounds and full sizes (~15-20 min)")
    parser.add_argument("--also", default="", help="more built-in proxies, e.g. twisted,haproxy2")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    if shutil.which("gcc") is None:
        print("bench/compare.py needs gcc (it compiles the load generator)", file=sys.stderr)
        return 2
    found = [name for name, program in PEERS.items() if shutil.which(program)]
    missing = sorted(set(PEERS) - set(found))
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}", file=sys.stderr)
    proxies = ["direct"] + found + [p for p in args.also.split(",") if p]
    ref = "haproxy" if "haproxy" in found else "direct"
    os.makedirs(args.out, exist_ok=True)
    cmd = [
        sys.executable, HARNESS, "--proxies", ",".join(proxies),
        "--proxy-cmd", txsockproxyCommand(), "--ref", ref, "--out", args.out,
    ]
    if not args.full:
        cmd.append("--quick")
    cmd += extra
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

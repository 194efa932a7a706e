"""
What a proxy's own code costs per connection and per request, counted in
instructions (user space: the program, its interpreter and its libraries;
not the kernel), with valgrind's callgrind.

Timings on a shared two-CPU virtual machine move by 20-80 % from one minute
to the next; a count of instructions for the same code and the same load
moves by about 2 %, whatever else the machine is doing.  So this is the
measure for a change to the cost of a session: run it before and after.
It is not a benchmark of speed (a proxy under valgrind runs ~50 times
slower, and the kernel's share, the same for every Python relay here, is
not counted); doc/performance.md relates the counts to connection rates.

    python bench/instructions.py                          # txsockproxy of this tree, lean, lighttpd
    python bench/instructions.py --proxies txsockproxy --tree /tmp/other-checkout
    python bench/instructions.py --proxy-toml 'congestion = "system"'

Proxies: C{txsockproxy} (twistd sockproxy from --tree, one process),
C{lean} (bench/lean_relay.py: a correct relay in Python, the floor),
C{minimal} (bench/minimal_relay.py), C{lighttpd} (mod_sockproxy), each
skipped if not available.  Scenarios: C{conn} (short connections, 50 at a
time, 64 bytes each way: instructions per connection) and C{rr} (50
connections, 64-byte ping-pong: instructions per request).  Needs valgrind,
gcc (for the load generator and backend of bench/proxybench) and Linux.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "proxybench"))
import proxybench as pb  # noqa: E402
from robustness import DEFAULT_TREE, LAUNCHER, tree_label  # noqa: E402

HOST = "127.0.0.1"
PROXIES = ("txsockproxy", "lean", "minimal", "lighttpd")
SCENARIOS = ("conn", "rr")
START_TIMEOUT = 120.0  # seconds: a Python program under valgrind starts slowly

TXSP_CFG = """\
session-log = "off"
{top}
[[proxy]]
name = "bench"
listen = "tcp:{listen}:interface={host}"
{proxy}
[[proxy.backend]]
endpoint = "tcp:host={host}:port={backend}"
"""

def accepting(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def build(workdir: str) -> tuple[str, str]:
    """
    Compile the harness's load generator and backend into C{workdir}.
    """
    out = []
    for name in ("pb_load", "pb_backend"):
        dst = os.path.join(workdir, name)
        src = os.path.join(HERE, "proxybench", name + ".c")
        r = subprocess.run(["gcc", "-O2", "-o", dst, src], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"instructions.py: gcc {src} failed:\n{r.stderr}")
        out.append(dst)
    return out[0], out[1]


def command(args: argparse.Namespace, proxy: str, workdir: str, listen: int,
            backend: int) -> Optional[tuple[list[str], dict[str, str]]]:
    """
    The command line and environment of C{proxy}, or L{None} if it is not
    available here.
    """
    env = dict(os.environ)
    if proxy == "txsockproxy":
        path = os.path.join(workdir, "sockproxy.toml")
        with open(path, "w") as f:
            f.write(TXSP_CFG.format(listen=listen, backend=backend, host=HOST,
                                    top="\n".join(args.top_toml), proxy="\n".join(args.proxy_toml)))
        env["PYTHONPATH"] = os.pathsep.join([args.tree] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return ([args.python, "-c", LAUNCHER, "-n", "--pidfile=", "--logfile",
                 os.path.join(workdir, "twistd.log"), "sockproxy", "--config", path], env)
    if proxy in ("lean", "minimal"):
        script = os.path.join(HERE, f"{proxy}_relay.py")
        return [args.python, script, str(listen), str(backend)], env
    if proxy == "lighttpd":
        if shutil.which("lighttpd") is None:
            return None
        path = os.path.join(workdir, "lighttpd.conf")
        with open(path, "w") as f:
            # The harness's own configuration (mod_sockproxy, one backend).
            f.write(pb.LIGHTTPD_CFG.format(workdir=workdir, listen_host=HOST, listen=listen,
                                           backend_host=HOST, backend=backend, fdlimit=4096,
                                           maxconn=2000))
        return ["lighttpd", "-D", "-f", path], env
    raise SystemExit(f"instructions.py: unknown proxy {proxy!r} (known: {', '.join(PROXIES)})")


def totalInstructions(path: str) -> int:
    total = None
    with open(path) as f:
        for line in f:
            if line.startswith("totals:"):
                total = int(line.split()[1])
    if total is None:
        raise RuntimeError(f"no totals in {path}")
    return total


def measure(args: argparse.Namespace, tools: tuple[str, str], proxy: str, scenario: str,
            workdir: str) -> Optional[dict[str, Any]]:
    """
    One proxy, one scenario: instructions per connection (conn) or per
    request (rr).
    """
    load, pbBackend = tools
    # The harness's: below the ephemeral range, never the same twice.
    backend, listen = pb.free_port(), pb.free_port()
    be = subprocess.Popen([pbBackend, str(backend)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    proc = None
    try:
        cmd = command(args, proxy, workdir, listen, backend)
        if cmd is None:
            return None
        argv, env = cmd
        out = os.path.join(workdir, f"callgrind.{proxy}.{scenario}")
        for old in os.listdir(workdir):
            if old.startswith(os.path.basename(out)):
                os.unlink(os.path.join(workdir, old))
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=no",
             f"--callgrind-out-file={out}.%p", *argv],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(workdir, f"{proxy}.log"), "w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepting(listen):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{proxy} did not start (see {workdir}/{proxy}.log)")
            time.sleep(0.2)
        # Warm up (first connections: imports, caches), then count.
        subprocess.run([load, "conn", "--target", f"{HOST}:{listen}", "-c", "10", "-d", "60",
                        "-n", "200", "-s", "64"], capture_output=True, check=True)
        control = ["callgrind_control"]
        subprocess.run(control + ["-z", str(proc.pid)], capture_output=True, check=True)
        subprocess.run(control + ["-i", "on", str(proc.pid)], capture_output=True, check=True)
        if scenario == "conn":
            run = [load, "conn", "--target", f"{HOST}:{listen}", "-c", str(args.conc),
                   "-d", "300", "-n", str(args.connections), "-s", "64"]
        else:
            run = [load, "rr", "--target", f"{HOST}:{listen}", "-c", str(args.conc),
                   "-d", "300", "-n", str(args.requests), "-s", "64", "-w", "0"]
        result = subprocess.run(run, capture_output=True, text=True, check=True)
        subprocess.run(control + ["-i", "off", str(proc.pid)], capture_output=True, check=True)
        subprocess.run(control + ["-d", str(proc.pid)], capture_output=True, check=True)
        done = json.loads(result.stdout.strip().splitlines()[-1])
        units = int(done.get("ok") or done.get("recorded") or 0)
        errors = done.get("errors") or {}
        if not units or (sum(errors.values()) if isinstance(errors, dict) else errors):
            raise RuntimeError(f"{proxy} {scenario}: load failed: {done}")
        # The dump asked for: OUT.PID.1 (OUT.PID is written at exit).
        dumps = [os.path.join(workdir, n) for n in os.listdir(workdir)
                 if n.startswith(os.path.basename(out) + ".") and n.count(".") == out.count(".") + 2]
        total = max(totalInstructions(d) for d in dumps)
        return {"proxy": proxy, "scenario": scenario, "units": units, "instructions": total,
                "per_unit": total / units}
    finally:
        for p in (proc, be):
            if p is not None and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(30)
                except (OSError, subprocess.TimeoutExpired):
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# Instructions per connection and per request ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC)",
        "",
        f"txsockproxy: {args.tree} ({tree_label(args.tree)}); callgrind, user space only; "
        f"conn: {args.connections} connections, {args.conc} at a time; "
        f"rr: {args.requests} requests over {args.conc} connections; 64 bytes each way.",
        "",
    ]
    if args.top_toml or args.proxy_toml:
        lines += [f"txsockproxy settings: {' '.join(args.top_toml + args.proxy_toml)}", ""]
    ref = {(r["scenario"]): r["per_unit"] for r in results if r["proxy"] == "lean"}
    lines += ["| proxy | scenario | units | instructions per unit | × lean |", "|---|---|---|---|---|"]
    for r in results:
        base = ref.get(r["scenario"])
        ratio = f"{r['per_unit'] / base:.2f}" if base else "–"
        unit = "connection" if r["scenario"] == "conn" else "request"
        lines.append(f"| {r['proxy']} | {r['scenario']} | {r['units']:,} | "
                     f"{r['per_unit']:,.0f} per {unit} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxies", default="txsockproxy,lean,lighttpd",
                    help=f"comma-separated, of: {', '.join(PROXIES)}")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--connections", type=int, default=3000, help="connections counted (conn)")
    ap.add_argument("--requests", type=int, default=30000, help="requests counted (rr)")
    ap.add_argument("--conc", type=int, default=50)
    ap.add_argument("--tree", default=DEFAULT_TREE, help="the txsockproxy checkout to run")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--top-toml", action="append", default=[], help="a top-level line for txsockproxy's config")
    ap.add_argument("--proxy-toml", action="append", default=[], help="a line for its [[proxy]] table")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for TAG.md and TAG.json")
    ap.add_argument("--tag", default=None, help="write TAG.md and TAG.json to --out")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "gcc"):
        if shutil.which(tool) is None:
            sys.exit(f"instructions.py: {tool} not found")
    workdir = tempfile.mkdtemp(prefix="instructions-")
    try:
        tools = build(workdir)
        results = []
        for scenario in args.scenarios.split(","):
            for proxy in args.proxies.split(","):
                r = measure(args, tools, proxy.strip(), scenario.strip(), workdir)
                if r is None:
                    print(f"instructions.py: {proxy} not available, skipped", file=sys.stderr)
                    continue
                print(f"{proxy} {scenario}: {r['per_unit']:,.0f} instructions per unit", file=sys.stderr)
                results.append(r)
        text = report(results, args)
        print(text)
        if args.tag:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, args.tag + ".md"), "w") as f:
                f.write(text)
            with open(os.path.join(args.out, args.tag + ".json"), "w") as f:
                json.dump({"tree": tree_label(args.tree), "results": results}, f, indent=1)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

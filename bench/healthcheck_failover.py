#!/usr/bin/env python3
"""
What health checks save when a backend is killed under load: the session
connects that fail (each one a client waiting for a failover) with
C{check = "connect"} against passive checks only (C{disable-time}).

Runs C{twistd sockproxy} with two proxies sharing a victim backend and a
good one (loopback, threads), sessions through both in turn, kills the
victim, and counts for C{--seconds} (the scenario of
tests/test_healthcheck_integration.py, longer and repeated):

    python bench/healthcheck_failover.py --seconds 10 --interval 0.5 --rounds 3

Only 127.0.0.1 is used; only processes it started are signalled.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_healthcheck_integration import (  # noqa: E402
    KilledUnderLoadIntegrationTests,
    killUnderLoad,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.5, help="check-interval (fall 2)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| round | mode | sessions | failed connects to the victim | clients not served | refused |")
    print("|---|---|---|---|---|---|")
    for n in range(1, args.rounds + 1):
        case = KilledUnderLoadIntegrationTests("test_checksStopFailedConnects")
        case.setUp()
        try:
            result = killUnderLoad(case, args.seconds, interval=args.interval)
        finally:
            shutil.rmtree(case.tmp, True)
        for mode in ("checked", "passive"):
            r = result[mode]
            print(f"| {n} | {mode} | {r['sessions']} | {r['failed']} | {r['unserved']} "
                  f"| {r['refused']} |")


if __name__ == "__main__":
    main()

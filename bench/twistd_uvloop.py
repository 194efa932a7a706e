"""
Run twistd on Twisted's asyncio reactor over uvloop's event loop, to measure
txsockproxy on it:

    python bench/twistd_uvloop.py -n --pidfile= sockproxy --config FILE

Needs uvloop (C{pip install uvloop}); everything after the script's name goes
to twistd.  Twisted's own asyncio reactor over the standard loop is
C{twistd --reactor=asyncio ...}; see doc/performance.md for the figures.
"""

import asyncio
import sys

import uvloop


def main() -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor

    asyncioreactor.install(loop)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()

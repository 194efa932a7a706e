# ruff: noqa  (vendored from the team's shared proxybench harness; kept as is)
"""Naive Python baseline: Twisted's own twisted.protocols.portforward.

usage: python3 twisted_portforward.py LISTEN_PORT BACKEND_HOST BACKEND_PORT

Only deviations from the 5-line textbook version: listen backlog 1024 (Twisted's
default is 50, which would measure SYN-queue drops, not the proxy) and the
factories are not "noisy" (no per-connection log events).
"""
import sys

from twisted.internet import reactor
from twisted.protocols import portforward

listen_port, backend_host, backend_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
portforward.ProxyFactory.noisy = False
portforward.ProxyClientFactory.noisy = False
reactor.listenTCP(listen_port, portforward.ProxyFactory(backend_host, backend_port),
                  backlog=1024, interface="127.0.0.1")
reactor.run()

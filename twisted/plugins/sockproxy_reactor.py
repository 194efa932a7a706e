"""
txsockproxy's reactor as a Twisted reactor plugin:
C{twistd --reactor=txsockproxy sockproxy ...} (C{twistd --help-reactors}
lists it).
"""

from twisted.application.reactors import Reactor

txsockproxy = Reactor(
    "txsockproxy",
    "txsockproxy._fast.reactor",
    "txsockproxy's epoll reactor (Linux): Twisted's, with less work per I/O event",
)

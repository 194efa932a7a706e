"""
Tests for L{txsockproxy.inherited.ListenerOption}: where an option a
listening socket gives its connections stands.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txsockproxy.inherited import ListenerOption


class Option(ListenerOption):
    """
    An option a connection's socket (here: a bool, or an exception to
    raise) has or not.
    """

    __slots__ = ("asked",)

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[Any] = []

    def connectionHas(self, sock: Any) -> bool:
        self.asked.append(sock)
        if isinstance(sock, Exception):
            raise sock
        return bool(sock)


class ListenerOptionTests(SynchronousTestCase):
    def test_beforeGiven(self) -> None:
        """
        Until a listening port was given the option, no connection has it
        from there; the listener is tried once.
        """
        option, port = Option(), object()
        self.assertFalse(option.inherited(port, True))
        self.assertFalse(option.inherited(None, True))
        self.assertFalse(option.tryListener(None))
        self.assertTrue(option.tryListener(port))
        self.assertFalse(option.tryListener(port))
        self.assertEqual(option.asked, [])

    def test_checkedUntilFirstFound(self) -> None:
        """
        Once given, the connections of that port are asked until the first
        one that has it; from then on none is asked; another port's
        connections do not have it.
        """
        option, port = Option(), object()
        option.given(port)
        self.assertFalse(option.inherited(port, False))
        self.assertTrue(option.inherited(port, True))
        self.assertTrue(option.inherited(port, False))
        self.assertEqual(option.asked, [False, True])
        self.assertFalse(option.inherited(object(), True))

    def test_errorAsking(self) -> None:
        """
        A socket that cannot be asked (closed) is left alone, and checking
        goes on with the next.
        """
        option, port = Option(), object()
        option.given(port)
        self.assertTrue(option.inherited(port, OSError(9, "closed")))
        self.assertTrue(option.checking)

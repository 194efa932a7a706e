"""
Socket options that a TCP listening socket gives to its connections.

Linux creates each connection of a listening socket (at the client's SYN)
as a copy of it, options included: C{TCP_NODELAY}, C{TCP_CONGESTION}, ….
An option every connection of a port should have can then be set once, on
the listening socket, instead of once per connection.  L{ListenerOption}
keeps where that stands for one option and one listening port: the first
connection accepted gets the option itself and gives it to the listening
socket; connections created before that (waiting to be accepted) get it one
by one; they are accepted in the order created, so the first one found with
the option ends the search, and from then on a connection of that port
needs no system call for it.
"""

from __future__ import annotations

from typing import Any


class ListenerOption:
    """
    One option and the listening port it was given to (see the module's
    docstring).  Subclasses say how to tell that a connection's socket has
    it (L{connectionHas}); the caller sets it on connections and on the
    listening socket, and calls L{given} once the listening socket has it.

    @ivar port: the listening port given the option, or L{None}.
    @ivar checking: whether connections of C{port} may still predate that.
    @ivar tried: whether a listening port was tried (once: the listening
        socket does not change).
    """

    __slots__ = ("port", "checking", "tried")

    def __init__(self) -> None:
        self.port: Any = None
        self.checking = False
        self.tried = False

    def inherited(self, port: Any, sock: Any) -> bool:
        """
        Whether the connection of listening port C{port} (its socket
        C{sock}) was created with the option, or cannot be told (an error
        asking it): nothing to set then.
        """
        if port is None or port is not self.port:
            return False
        if self.checking:
            try:
                if not self.connectionHas(sock):
                    return False
            except (OSError, AttributeError):
                return True
            self.checking = False
        return True

    def connectionHas(self, sock: Any) -> bool:
        """
        Whether C{sock}, a connection's socket, has the option.
        """
        raise NotImplementedError

    def tryListener(self, port: Any) -> bool:
        """
        Whether to try giving the option to C{port}'s listening socket now:
        the first time only.
        """
        if self.tried or port is None:
            return False
        self.tried = True
        return True

    def given(self, port: Any) -> None:
        """
        C{port}'s listening socket has the option now: its connections
        created from now on have it too.
        """
        self.port = port
        self.checking = True


__all__ = ["ListenerOption"]

"""
The seams of txsockproxy: what a balancer is, and what it sees; and how a
session's bytes travel (L{IRelayPath}), the one way the accelerator is
reached.

A balancer plugin is an object providing L{IBalancerFactory} (and
C{twisted.plugin.IPlugin}) in any package's C{twisted/plugins/}; the proxy finds it
by its C{name}, the value written in C{balance = "..."}.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from zope.interface import Attribute, Interface


class IBackendInfo(Interface):
    """
    What a balancer sees of one backend.
    """

    label: str = Attribute("The backend's label, unique within its proxy (L{str}).")
    key: str = Attribute(
        "A stable key for hashing: the backend's client endpoint string (L{str})."
    )
    weight: int = Attribute("Relative share of connections, at least 1 (L{int}).")
    active: int = Attribute(
        "Sessions currently assigned to the backend, including ones still "
        "connecting (L{int})."
    )


class IConnectionInfo(Interface):
    """
    What a balancer knows of the client connection it places.
    """

    peer = Attribute("The client's address (an L{twisted.internet.interfaces.IAddress}).")
    local = Attribute(
        "The address the client connected to, i.e. the listen address "
        "(an L{twisted.internet.interfaces.IAddress})."
    )
    serverName: Optional[str] = Attribute(
        "The TLS SNI server name when known, else L{None}."
    )


class IBalancer(Interface):
    """
    Picks a backend for each new client connection of one proxy.

    A balancer may also have the optional attribute C{wantsServerName =
    True}: the proxy then waits, up to its C{inspect-delay}, for the client's
    TLS ClientHello (or a TLS listener's handshake) before calling
    L{choose}, so that C{connection.serverName} is known.
    """

    def choose(
        candidates: Sequence[IBackendInfo], connection: IConnectionInfo
    ) -> Optional[IBackendInfo]:
        """
        Choose the backend for C{connection}.

        @param candidates: the backends available now (not disabled, not
            draining), in config order; never empty.
        @param connection: the client connection being placed.
        @return: one of C{candidates}, or L{None} to refuse the connection.
        """


class IBalancerFactory(Interface):
    """
    A kind of balancer, found as a Twisted plugin by its C{name}.
    """

    name: str = Attribute("The name written in C{balance = \"...\"} (L{str}).")
    description: str = Attribute("One line saying what the balancer does (L{str}).")

    def __call__() -> IBalancer:
        """
        Make a new balancer for one proxy.

        @return: a fresh L{IBalancer} holding that proxy's balancing state.
        """


class ICancellable(Interface):
    """
    Something under way that can be called off (a connect).
    """

    def cancel() -> None:
        """
        Call it off; what it would have reported is reported as a failure.
        """


class IRelayPath(Interface):
    """
    How a session connects its backend and moves bytes between its two
    transports: the seam between the relay's semantics (the session's:
    half-close, resets, timeouts, failover) and the mechanics of moving
    bytes.

    The default, L{txsockproxy.portable.PortableRelayPath}, uses Twisted's
    public API on every reactor. An accelerated path may do the same work
    with fewer system calls; it must keep every semantic the session relies
    on, and fall back to the portable way wherever it does not apply.
    """

    name: str = Attribute("What the path is called in logs (L{str}), e.g. C{\"portable\"}.")

    def connect(
        endpoint: Any, factory: Any, timeout: float, congestion: Any
    ) -> ICancellable:
        """
        Connect C{factory} (a L{twisted.internet.protocol.ClientFactory})
        through C{endpoint} (an
        L{twisted.internet.interfaces.IStreamClientEndpoint}), giving up
        after C{timeout} seconds.

        Success builds the factory's protocol (its C{buildProtocol}, then
        C{makeConnection}); failure, timeout (L{twisted.internet.error.TimeoutError}
        or L{twisted.internet.defer.TimeoutError}) or cancellation is
        reported to the factory's C{clientConnectionFailed(connector,
        reason)}, possibly in a later reactor turn.

        @param congestion: the backend's
            L{txsockproxy.congestion.Congestion}, which a path may apply
            before the connect (the transport's C{congestionSet} then says
            so).
        @return: what cancels the connect.
        """

    def join(client: Any, backend: Any, owner: Any) -> Any:
        """
        The session's two transports are connected: relay between them from
        now on.  Right after this call the session registers each side's
        protocol as the streaming producer of the other side's transport
        (and, if the client has sent its EOF already, shuts the backend's
        write side).

        @param owner: the session. A path relaying outside the protocols
            reports bytes through its C{fromClient}/C{fromBackend} (for the
            ordinary way); bytes it moved itself, it counts as the session's
            C{countUp}/C{countDown} would: in the session's
            C{bytesFromClient}/C{bytesFromBackend} and its backend's
            C{bytesOut}/C{bytesIn}, and, while the session's
            C{inactivityTimeout} is set, C{lastActivity} =
            C{clock.seconds()} (in place, not through a call per read: see
            L{txsockproxy.relay.Session}).  A side it stops reading it
            reports through C{sidePaused}/C{sideResumed}.
        @return: L{None}, or an object whose C{release()} the session
            calls once both transports are closed.
        """

    def write(transport: Any, data: bytes) -> None:
        """
        Write C{data} to C{transport} (as its C{write()}).
        """

    def writePreamble(client: Any, backend: Any, data: bytes) -> int:
        """
        Write C{data}, which the backend must get before any of the client's
        bytes (a PROXY protocol header), to C{backend}; a path that can read
        what C{client} has already received without waiting may send that in
        the same write, sparing the backend a segment and the proxy a call.

        @return: how many of the client's bytes went with it: they are never
            delivered to the client's protocol, and count as relayed.
        """

    def shutWrite(transport: Any) -> None:
        """
        End C{transport}'s write side after what is buffered (as its
        C{loseWriteConnection()}).
        """

    def drained(transport: Any) -> bool:
        """
        Whether nothing is left to write to C{transport}, so that it may be
        closed at once without shutting its write side first: C{close()}
        sends the FIN.  Asked once both directions of a session are over.
        A path that cannot tell says C{False}.
        """

    def close(transport: Any, drained: bool) -> None:
        """
        Close C{transport} after what is buffered (as its
        C{loseConnection()}).

        @param drained: the peer's EOF has been read: nothing more can
            arrive on it.
        """

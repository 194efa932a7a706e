"""
The seams of txsockproxy: what a balancer is, and what it sees.

A balancer plugin is an object providing L{IBalancerFactory} (and
C{twisted.plugin.IPlugin}) in any package's C{twisted/plugins/}; the proxy finds it
by its C{name}, the value written in C{balance = "..."}.
"""

from __future__ import annotations

from typing import Optional, Sequence

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

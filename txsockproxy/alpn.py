"""
ALPN on TLS listeners: a listener that has no protocol in common with a
client declines ALPN, and the handshake goes on without it.

Since Twisted 26.4, C{CertificateOptions} installs an ALPN select callback on
every context it makes, protocols configured or not, and that callback
answers a client whose offer it cannot match (every client, when none are
configured) with C{b""}.  pyOpenSSL hands that to OpenSSL as an accepted,
empty protocol, which OpenSSL refuses with an C{internal_error} alert: every
client that offers ALPN (curl, browsers, C{openssl s_client -alpn ...}) fails
the handshake on an C{ssl:} listener.  Twisted 24.7 to 25.5 installed no
callback without protocols, and those clients got TLS without ALPN.

L{declineUnmatchedALPN} replaces that callback on a context with one that
selects as Twisted's does and otherwise returns pyOpenSSL's
C{NO_OVERLAPPING_PROTOCOLS}, which tells OpenSSL not to answer ALPN at all.
L{reactorDecliningALPN} wraps a reactor so that every context given to its
C{listenSSL}, which is how C{ssl:} server endpoints listen, gets it: the
reactor to build listen endpoints with.  Public APIs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar, Union, cast

from OpenSSL.SSL import NO_OVERLAPPING_PROTOCOLS, Connection, Context
from twisted.internet.interfaces import IOpenSSLContextFactory, IProtocolNegotiationFactory
from twisted.logger import Logger
from zope.interface import directlyProvides, implementer, providedBy

_Selected = Union[bytes, object]
_Reactor = TypeVar("_Reactor")

_log = Logger()


def _offeredByFactory(connection: Connection) -> tuple[bytes, ...]:
    """
    The protocols the wrapped factory of the connection's TLS protocol
    accepts, if it provides L{IProtocolNegotiationFactory} (Twisted's C{Site}
    does); none otherwise, or when the connection does not lead to a factory
    (Twisted before 26.4 sets no application data on server connections).
    """
    tlsProtocol = connection.get_app_data()
    tlsFactory = getattr(tlsProtocol, "factory", None)
    wrapped = getattr(tlsFactory, "wrappedFactory", None)
    negotiating = IProtocolNegotiationFactory(wrapped, None)
    if negotiating is None:
        return ()
    return tuple(negotiating.acceptableProtocols())


def selectProtocol(
    offered: Sequence[bytes], acceptable: Sequence[bytes]
) -> _Selected:
    """
    The protocol to answer an ALPN offer with.

    @param offered: the client's protocols.
    @param acceptable: ours, preferred first.
    @return: the first of C{acceptable} that the client offered, or
        L{NO_OVERLAPPING_PROTOCOLS} when there is none, so that the server
        does not answer ALPN and the handshake goes on.
    """
    for protocol in acceptable:
        if protocol in offered:
            return protocol
    return NO_OVERLAPPING_PROTOCOLS


def declineUnmatchedALPN(context: Context, acceptableProtocols: Sequence[bytes] = ()) -> None:
    """
    Make C{context} select ALPN protocols the way Twisted does, from
    C{acceptableProtocols} and those of the wrapped factory, but decline
    ALPN when none of them was offered, instead of failing the handshake.

    @param context: a server context; its ALPN select callback is replaced.
    @param acceptableProtocols: the protocols its options were configured
        with, if any (they cannot be read back from the context).
    """
    configured = tuple(acceptableProtocols)

    def select(connection: Connection, offered: list[bytes]) -> Any:
        return selectProtocol(offered, _offeredByFactory(connection) + configured)

    context.set_alpn_select_callback(select)


@implementer(IOpenSSLContextFactory)
class _ContextFactoryDecliningALPN:
    """
    A context factory whose every new context declines unmatched ALPN: for
    context factories that do not keep the context they made.
    """

    def __init__(self, contextFactory: Any, acceptableProtocols: Sequence[bytes]) -> None:
        self._contextFactory = contextFactory
        self._acceptableProtocols = tuple(acceptableProtocols)

    def getContext(self) -> Context:
        context = self._contextFactory.getContext()
        declineUnmatchedALPN(context, self._acceptableProtocols)
        return context


def contextFactoryDecliningALPN(
    contextFactory: Any, acceptableProtocols: Sequence[bytes] = ()
) -> Any:
    """
    A context factory for a TLS listener, making contexts like
    C{contextFactory} that decline ALPN when nothing matches.

    Twisted's C{CertificateOptions} (what C{ssl:} endpoints use) makes one
    context and uses it for every connection: that context is fixed in
    place, and C{contextFactory} itself is returned.  A context factory that
    makes a new context each time is wrapped instead.

    @param contextFactory: an L{IOpenSSLContextFactory}.
    @param acceptableProtocols: the protocols C{contextFactory} was
        configured with, if any.
    """
    context = contextFactory.getContext()
    try:
        declineUnmatchedALPN(context, acceptableProtocols)
    except ValueError as e:
        # pyOpenSSL 26.2 and later refuse to change a context that already
        # made a connection: one listened on before, left as it is.
        _log.warn("TLS listener: ALPN left as Twisted sets it: {error}", error=str(e))
        return contextFactory
    if contextFactory.getContext() is context:
        return contextFactory
    return _ContextFactoryDecliningALPN(contextFactory, acceptableProtocols)


class ALPNDecliningReactor:
    """
    A reactor for building listen endpoints (C{strports.service},
    C{serverFromString}): the reactor it wraps, except that the contexts of
    its TLS listeners decline ALPN when nothing matches (see
    L{contextFactoryDecliningALPN}).

    It provides the interfaces of the reactor it wraps, and passes every
    other call through; the ports it returns are that reactor's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        directlyProvides(self, *providedBy(reactor))

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
        interface: str = "",
    ) -> Any:
        """
        Listen as the wrapped reactor's C{listenSSL} does, with
        C{contextFactory}'s contexts declining unmatched ALPN.

        @return: the wrapped reactor's L{IListeningPort}.
        """
        return self._reactor.listenSSL(
            port, factory, contextFactoryDecliningALPN(contextFactory), backlog, interface
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def reactorDecliningALPN(reactor: _Reactor) -> _Reactor:
    """
    The reactor to build TLS listen endpoints with (C{strports.service},
    C{serverFromString}): C{reactor}, with unmatched ALPN declined on the
    contexts of its TLS listeners.

    @return: an L{ALPNDecliningReactor}, typed as C{reactor} since it
        provides the same interfaces.
    """
    return cast(_Reactor, ALPNDecliningReactor(reactor))

"""
txsockproxy's accelerator (Linux): a leaner epoll reactor and listening
port, a connector with fewer system calls, and a relay that moves bytes
between two sockets without Twisted's buffers (C{splice(2)} or a copy).

Everything here may touch Twisted's private names; nothing outside this
package does. It is reached through L{accelerate}, which first checks what
it relies on (L{txsockproxy._fast.probe}) and steps aside when that is not
there, so that the proxy runs on the portable path instead.
"""

from __future__ import annotations

from typing import Any, Optional

from txsockproxy.interfaces import IRelayPath


def accelerate(reactor: Any, mode: str, checkVersion: bool = True) -> tuple[Optional[IRelayPath], str]:
    """
    The accelerated relay path for C{reactor}, or L{None} and why not.

    @param mode: C{"splice"} or C{"copy"}.
    @param checkVersion: whether a Twisted outside the tested versions turns
        the accelerator off (else it is only checked for what it uses).
    @return: the path (or L{None}), and one line saying what was decided.
    """
    from txsockproxy._fast import probe

    try:
        from twisted.internet import epollreactor
    except ImportError:  # pragma: no cover (no epoll here)
        epollreactor = None  # type: ignore[assignment]
    if epollreactor is None or not isinstance(reactor, epollreactor.EPollReactor):
        kind = type(reactor)
        return None, f"the accelerator needs an epoll reactor, not {kind.__module__}.{kind.__name__}"
    if checkVersion:
        problem = probe.versionProblem()
        if problem is not None:
            return None, f"accelerator off: {problem}"
    absent = probe.missing(reactor)
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        return None, f"accelerator off: this Twisted lacks what it relies on ({shown})"
    try:
        from txsockproxy._fast.path import AcceleratedRelayPath
        from txsockproxy._fast.relay import CAN_SPLICE
    except Exception as e:
        return None, f"accelerator off: it cannot be loaded ({type(e).__name__}: {e})"
    if mode == "splice" and not CAN_SPLICE:
        mode = "copy"
    return AcceleratedRelayPath(reactor, mode), f"accelerator on ({mode})"


def installReactor(checkVersion: bool = True) -> Optional[str]:
    """
    Install the accelerator's epoll reactor as the global reactor, if this
    Twisted (and an instance of the reactor) has what it relies on.

    @return: L{None} once installed, else why not, in one line.
    """
    from txsockproxy._fast import probe

    problem = probe.versionProblem() if checkVersion else None
    absent = probe.missing()
    if problem is not None or absent:
        return f"accelerator off: {problem or ', '.join(absent[:5])}"
    try:
        from twisted.internet.main import installReactor as installGlobal

        from txsockproxy._fast.reactor import EPollReactor
    except Exception as e:
        return f"the accelerator's reactor cannot be loaded: {e}"
    reactor = EPollReactor()
    absent = probe.missing(reactor)
    if absent:
        return f"accelerator off: {', '.join(absent[:5])}"
    installGlobal(reactor)
    return None


__all__ = ["accelerate", "installReactor"]

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

    if checkVersion:
        problem = probe.versionProblem()
        if problem is not None:
            return None, f"accelerator off: {problem}"
    epoll = hasattr(reactor, "_poller") or type(reactor).__name__.lower().startswith("epoll")
    absent = probe.missing(reactor if epoll else None)
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


__all__ = ["accelerate"]

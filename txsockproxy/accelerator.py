"""
Choosing how sessions relay: through the accelerator (L{txsockproxy._fast},
Linux, an epoll reactor) where it applies and its checks pass, else through
Twisted's public API (L{PortableRelayPath}), on every reactor.

The setting comes from the configuration's C{accelerator} key, or, when
set, from the environment, C{TXSOCKPROXY_FASTPATH}:

 - C{auto} (or unset): the accelerator in C{splice} mode if this Twisted is
   one it was tested with and has what it relies on;
 - C{splice} or C{copy}: that mode, on any Twisted that has what it relies
   on (a version it was not tested with is only warned about);
 - C{off}: the portable path; no private name of Twisted is touched, and
   the reactor is Twisted's own.

This module only loads the accelerator when the setting asks for it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Mapping, Optional

from twisted.protocols.tls import TLSMemoryBIOFactory

from txsockproxy.interfaces import IRelayPath
from txsockproxy.portable import PortableRelayPath

AUTO = "auto"
OFF = "off"
SETTINGS = (AUTO, "splice", "copy", OFF)

# The environment variable that chooses.
VARIABLE = "TXSOCKPROXY_FASTPATH"


def setting(configured: str = AUTO, environ: Mapping[str, str] = os.environ) -> str:
    """
    The accelerator setting: C{environ}'s L{VARIABLE} when set to one of
    L{SETTINGS}, else C{configured} (the configuration's C{accelerator}
    key).
    """
    value = environ.get(VARIABLE, "").strip().lower()
    return value if value in SETTINGS else configured


def relayPathFor(reactor: Any, choice: str = AUTO) -> tuple[IRelayPath, str]:
    """
    The relay path for sessions on C{reactor} with setting C{choice}, and
    one line saying which and why.
    """
    portable = PortableRelayPath(reactor)
    if choice == OFF:
        return portable, "relay path: portable (accelerator off)"
    if not sys.platform.startswith("linux"):
        return portable, "relay path: portable (the accelerator is for Linux)"
    try:
        from txsockproxy._fast import accelerate
    except Exception as e:  # pragma: no cover (a broken install)
        return portable, f"relay path: portable (the accelerator cannot be loaded: {e})"
    mode = "splice" if choice == AUTO else choice
    path, why = accelerate(reactor, mode, checkVersion=choice == AUTO)
    if path is None:
        return portable, f"relay path: portable ({why})"
    return path, f"relay path: accelerated ({why.removeprefix('accelerator on ').strip('()')})"


def installReactor(choice: str = AUTO) -> Optional[str]:
    """
    Install the accelerator's epoll reactor as the global reactor, if none
    is installed yet, the setting allows it, and this Twisted passes the
    accelerator's checks.

    @return: one line saying why it was or was not installed, or L{None}
        when a reactor was installed already (chosen by C{twistd
        --reactor} or the embedding program).
    """
    if "twisted.internet.reactor" in sys.modules:
        return None
    if choice == OFF:
        return "Twisted's default reactor (accelerator off)"
    if not sys.platform.startswith("linux"):
        return "Twisted's default reactor (the accelerator is for Linux)"
    try:
        from txsockproxy._fast import installReactor as install
    except Exception as e:  # pragma: no cover (a broken install)
        return f"Twisted's default reactor (the accelerator cannot be loaded: {e})"
    why = install(checkVersion=choice == AUTO)
    if why is not None:
        return f"Twisted's default reactor ({why})"
    return "txsockproxy's epoll reactor (the accelerator's default; --reactor chooses another)"


def tlsFactoryFor(reactor: Any) -> Callable[[Any, bool, Any], Any]:
    """
    What wraps a factory in TLS for a listener on C{reactor}, called as
    L{TLSMemoryBIOFactory} is: on the accelerator's reactor, its leaner TLS
    layer (the one its C{listenSSL} uses, so that C{ssl:} listeners and
    C{tls-certificates} ones are alike), which is Twisted's where this
    Twisted lacks what it relies on; else Twisted's.
    """
    accelerated = sys.modules.get("txsockproxy._fast.reactor")
    if accelerated is None or not isinstance(reactor, accelerated.EPollReactor):
        return TLSMemoryBIOFactory
    from txsockproxy._fast.tls import tlsFactory

    return tlsFactory


__all__ = [
    "AUTO", "OFF", "SETTINGS", "VARIABLE", "installReactor", "relayPathFor", "setting",
    "tlsFactoryFor",
]

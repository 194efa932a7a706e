"""
Transitional: L{installDefault} for C{txsockproxy.tap} until it asks
L{txsockproxy.accelerator} itself. (The reactor is
L{txsockproxy._fast.reactor}.)
"""

from __future__ import annotations

from typing import Optional


def installDefault() -> Optional[str]:
    """
    Install the accelerator's reactor when nothing has chosen one (see
    L{txsockproxy.accelerator.installReactor}).
    """
    from txsockproxy.accelerator import installReactor, setting

    return installReactor(setting())

"""
What Linux's C{/proc} tells about a process: the sockets it holds, its
parent and its user. The instance locks (L{txsockproxy.instancelock}) and the
take-over (L{txsockproxy.takeover}) read them; elsewhere than Linux there is
no C{/proc}, and these say they cannot tell.
"""

from __future__ import annotations

import os
from typing import Optional, Union

PROC = "/proc"

# A pid, or "self".
Process = Union[int, str]


def available(proc: str = PROC) -> bool:
    """
    Whether there is a C{/proc} to read.
    """
    return os.path.isdir(os.path.join(proc, "self"))


def socketInodes(pid: Process, proc: str = PROC) -> Optional[frozenset[int]]:
    """
    The inode numbers of the sockets the process C{pid} has descriptors of
    (C{/proc/PID/fd}).

    @return: L{None} when they cannot be read: no such process, another
        user's process, no C{/proc}.
    """
    directory = os.path.join(proc, str(pid), "fd")
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    inodes = set()
    for name in names:
        try:
            link = os.readlink(os.path.join(directory, name))
        except OSError:
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            try:
                inodes.add(int(link[8:-1]))
            except ValueError:
                continue
    return frozenset(inodes)


def processStatus(pid: int, proc: str = PROC) -> Optional[tuple[int, int]]:
    """
    The parent pid and effective uid of the process C{pid}
    (C{/proc/PID/status}, which every user may read), or L{None}: no such
    process.
    """
    ppid = uid = None
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="utf-8",
                  errors="replace") as f:
            for line in f:
                if line.startswith("PPid:"):
                    ppid = int(line.split()[1])
                elif line.startswith("Uid:"):
                    uid = int(line.split()[2])
    except (OSError, ValueError, IndexError):
        return None
    if ppid is None or uid is None:
        return None
    return ppid, uid


__all__ = ["PROC", "available", "processStatus", "socketInodes"]

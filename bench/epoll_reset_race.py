"""
How often Linux's epoll reports a socket being reset as hung up (and in
error) but not readable: the event Twisted's reactors take for a clean
close when they are reading the socket (see txsockproxy.handles.pendingError).

    python bench/epoll_reset_race.py 3000

A peer streams into a loopback connection from a thread and resets it; the
main thread reads with a level-triggered epoll. Prints each event seen with
EPOLLHUP or EPOLLERR and without EPOLLIN, with the socket's SO_ERROR at that
moment, and the count.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import threading


def once() -> bool:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    ours.setblocking(False)
    poller = select.epoll()
    poller.register(ours.fileno(), select.EPOLLIN)

    def stream() -> None:
        peer.setblocking(False)
        for _ in range(200):
            try:
                peer.send(b"x" * 4096)
            except BlockingIOError:
                pass
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()

    thread = threading.Thread(target=stream)
    thread.start()
    seen = False
    try:
        for _ in range(100_000):
            events = poller.poll(1)
            if not events:
                break
            _, event = events[0]
            if event & (select.EPOLLHUP | select.EPOLLERR) and not event & select.EPOLLIN:
                error = ours.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                print(f"hung up, not readable: events {event:#x}, SO_ERROR {error}")
                seen = True
                break
            try:
                if not ours.recv(65536):
                    break
            except ConnectionResetError:
                break
            except BlockingIOError:
                pass
    finally:
        thread.join()
        poller.close()
        ours.close()
    return seen


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seen = sum(once() for _ in range(runs))
    print(f"{seen} of {runs} resets seen as a hang-up without EPOLLIN")


if __name__ == "__main__":
    main()

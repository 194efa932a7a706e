"""
The floor for a proxy written in Python: a minimal epoll relay, no Twisted,
no half-close, no timeouts, no error handling worth the name.  Not a proxy to
use; a yardstick for the Python time per relayed event (see
doc/performance.md, "Per-connection work").

    python bench/minimal_relay.py LISTEN_PORT BACKEND_PORT [PROCESSES]

Listens on 127.0.0.1:LISTEN_PORT and relays each connection to
127.0.0.1:BACKEND_PORT (connecting with a blocking connect), until killed.
With PROCESSES (default 1), that many processes each listen on their own
SO_REUSEPORT socket, as txsockproxy's workers do.  Measure it like any
proxy, e.g. with proxybench's --proxy-cmd
'minimal=python bench/minimal_relay.py {listen} {backend}' and --scenarios rr;
run it with setsid (proxybench does), so that stopping its process group
stops every process.
"""

import os
import select
import socket
import sys


def main(listenPort: int, backendPort: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", listenPort))
    listener.listen(1024)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    peers: dict[int, socket.socket] = {}
    sockets: dict[int, socket.socket] = {}
    buffer = bytearray(262144)
    view = memoryview(buffer)
    while True:
        for fd, _ in poller.poll(-1, 64):
            if fd == listener.fileno():
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    continue
                backend = socket.create_connection(("127.0.0.1", backendPort))
                for sock in (client, backend):
                    sock.setblocking(False)
                    sockets[sock.fileno()] = sock
                    poller.register(sock.fileno(), select.EPOLLIN)
                peers[client.fileno()] = backend
                peers[backend.fileno()] = client
                continue
            sock = sockets.get(fd)
            if sock is None:
                continue
            try:
                n = sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if not n:
                other = peers.pop(fd)
                peers.pop(other.fileno(), None)
                for s in (sock, other):
                    sockets.pop(s.fileno(), None)
                    poller.unregister(s.fileno())
                    s.close()
                continue
            peers[fd].send(view[:n])


if __name__ == "__main__":
    for _ in range(int(sys.argv[3]) - 1 if len(sys.argv) > 3 else 0):
        if os.fork() == 0:
            break
    main(int(sys.argv[1]), int(sys.argv[2]))

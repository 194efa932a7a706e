"""
The C{sockproxy} twistd plugin: C{twistd -n sockproxy --config FILE}.
"""

from twisted.application.service import ServiceMaker

sockproxy = ServiceMaker(
    "txsockproxy",
    "txsockproxy.tap",
    "A transparent TCP/unix-socket proxy with load balancing and failover.",
    "sockproxy",
)

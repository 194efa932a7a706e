"""
Embedding txsockproxy in a Twisted application: run with

    twistd -ny examples/embed.tac

The proxy is one service among the application's others. Here the
configuration is written in the program; loadConfig("/path/to/file.toml")
reads a file instead. Either way it is validated, and a mistake raises
txsockproxy.ConfigError listing every problem.
"""

from twisted.application.service import Application

from txsockproxy import makeProxyService, parseConfig

CONFIG = """
[[proxy]]
name = "echo"
listen = "tcp:8081:interface=127.0.0.1"
balance = "round-robin"

[[proxy.backend]]
label = "one"
endpoint = "tcp:host=127.0.0.1:port=10001"

[[proxy.backend]]
label = "two"
endpoint = "tcp:host=127.0.0.1:port=10002"
"""

application = Application("embedded-sockproxy")
config = parseConfig(CONFIG, source="embed.tac")
proxy = makeProxyService(config)  # the global reactor; or ProxyService(config, reactor)
proxy.setServiceParent(application)
# Your own services go here too, e.g.:
#   strports.service("tcp:8000", Site(resource)).setServiceParent(application)

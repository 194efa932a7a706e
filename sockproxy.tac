"""
Deploy txsockproxy as a .tac file: C{twistd -ny sockproxy.tac}.

The configuration file comes from C{SOCKPROXY_CONFIG} (default: the example
config beside this file); it goes through the same Options and makeService as
C{twistd sockproxy --config FILE}.
"""

import os

from twisted.application.service import Application

from txsockproxy.tap import Options, makeService

configPath = os.environ.get(
    "SOCKPROXY_CONFIG",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples", "sockproxy.toml"),
)
options = Options()
options.parseOptions(["--config", configPath])
application = Application("sockproxy")
makeService(options).setServiceParent(application)

"""
The C{sockproxy} twistd plugin's command line (L{Options}) and L{makeService}.

Both C{twistd sockproxy ...} and C{sockproxy.tac} go through here.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, TextIO

from twisted.python import usage

from txsockproxy.config import Config, ConfigError, configFromArguments, loadConfig


class Options(usage.Options):
    """
    C{twistd sockproxy} options: a config file, or a quick proxy given on the
    command line.
    """

    synopsis = "[--config FILE | --listen ENDPOINT --backend ENDPOINT ...] [--check]"
    longdesc = (
        "Relay connections from listen endpoints to backends, unchanged, with "
        "load balancing, failover and correct half-close. Endpoints are Twisted "
        "endpoint strings, e.g. tcp:8080, unix:/run/app.sock, "
        "tcp:host=10.0.0.2:port=5432."
    )

    optParameters = [
        ["config", "c", None, "Configuration file (TOML)."],
        ["balance", "b", None, "Balancer for --listen/--backend (default: fair)."],
        ["debug", "d", None, "Debug level 0-3 (overrides the config file's debug)."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print it, and exit (0 = valid)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []
        self.stdout: TextIO = sys.stdout
        self.stderr: TextIO = sys.stderr

    def opt_listen(self, endpoint: str) -> None:
        """
        Listen on this server endpoint (repeatable), e.g. tcp:8080.
        """
        self["listen"].append(endpoint)

    def opt_backend(self, endpoint: str) -> None:
        """
        Relay to this client endpoint (repeatable), e.g. tcp:host=127.0.0.1:port=10000.
        """
        self["backend"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        try:
            self["configObject"] = self.buildConfig()
        except ConfigError as e:
            for problem in e.problems:
                print(f"sockproxy: {problem}", file=self.stderr)
            raise SystemExit(1) from None
        if self["check"]:
            print(self["configObject"].describe(), file=self.stdout)
            raise SystemExit(0)

    def buildConfig(self) -> Config:
        """
        The configuration the options describe.

        @raise ConfigError: the options or the file are invalid, or
            contradict each other.
        """
        from txsockproxy.config import Problem

        debug: Optional[int] = None
        if self["debug"] is not None:
            try:
                debug = int(self["debug"])
            except ValueError:
                raise ConfigError(
                    [Problem("<command line>", None, "--debug",
                             f"must be an integer 0-3, not {self['debug']!r}")]
                ) from None
            if not 0 <= debug <= 3:
                raise ConfigError(
                    [Problem("<command line>", None, "--debug", f"must be 0 to 3, not {debug}")]
                )
        if self["config"] is not None:
            mixed = [
                name for name in ("listen", "backend") if self[name]
            ] + (["balance"] if self["balance"] is not None else [])
            if mixed:
                raise ConfigError(
                    [
                        Problem(
                            "<command line>", None, "--" + name,
                            "cannot be combined with --config: put it in the file "
                            "(only --debug overrides the file)",
                        )
                        for name in mixed
                    ]
                )
            config = loadConfig(self["config"])
            if debug is not None:
                from dataclasses import replace

                config = replace(config, debug=debug)
            return config
        if not self["listen"] and not self["backend"]:
            raise ConfigError(
                [Problem("<command line>", None, "",
                         "give --config FILE, or --listen and --backend")]
            )
        return configFromArguments(
            self["listen"], self["backend"], self["balance"], debug or 0
        )


def makeService(options: Options, reactor: Any = None) -> Any:
    """
    Build the proxy service from parsed L{Options}.
    """
    from txsockproxy.service import makeProxyService

    return makeProxyService(options["configObject"], reactor)

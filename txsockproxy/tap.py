"""
The C{sockproxy} twistd plugin's command line (L{Options}) and L{makeService}.

Both C{twistd sockproxy ...} and C{sockproxy.tac} go through here.
"""

from __future__ import annotations

import gc
import os
import pwd
import stat
import sys
from dataclasses import replace
from typing import Any, Callable, Optional, TextIO

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from txsockproxy.cmdline import configFromArguments
from txsockproxy.config import Config, ConfigError, Problem
from txsockproxy.loading import loadConfig
from txsockproxy.render import describeConfig, renderToml

_COMMAND_LINE = "<command line>"
_log = Logger()


class Options(usage.Options):
    """
    C{twistd sockproxy} options: a config file, or a quick proxy given on the
    command line.
    """

    synopsis = "[--config FILE | --listen ENDPOINT --backend ENDPOINT ...] [--check | --print-toml]"
    longdesc = (
        "Relay connections from listen endpoints to backends, unchanged, with "
        "load balancing, failover and correct half-close. Endpoints are Twisted "
        "endpoint strings, e.g. tcp:8080, unix:/run/app.sock, "
        "tcp:host=10.0.0.2:port=5432."
    )

    optParameters = [
        ["config", "c", None, "Configuration file: TOML, or a lighttpd.conf (detected)."],
        ["balance", "b", None, "Balancer for --listen/--backend (default: fair)."],
        ["debug", "d", None, "Debug level 0-3 (overrides the config file's debug)."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print it, and exit (0 = valid)."],
        ["print-toml", None, "Print the configuration as native TOML (e.g. converted "
         "from a lighttpd.conf), and exit."],
        ["take-over", None, "Take over the listening sockets of the process serving on the "
         "config's takeover-socket, which then drains and exits (an upgrade)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []
        self["status"] = []
        self.stdout: TextIO = sys.stdout
        self.stderr: TextIO = sys.stderr
        self["received"] = None
        # How --take-over receives the sockets (see txsockproxy.takeover):
        # from the path, and from a process of which other uids than this
        # process's and root's.
        self.receive: Callable[[str, list[int]], Any] = _receive

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

    # One line each: --help shows an option method's docstring as it is,
    # the indentation of a second line included.

    def opt_status(self, endpoint: str) -> None:
        """
        Serve the status page and metrics on this endpoint (repeatable), e.g. tcp:9180:interface=127.0.0.1.
        """
        self["status"].append(endpoint)

    opt_l = opt_listen

    def opt_config(self, path: str) -> None:
        # (The help text is optParameters'.)  Twice is a mistake, not "the
        # last one wins".
        if self["config"] is not None:
            raise usage.UsageError(f"--config given twice ({self['config']!r} and {path!r})")
        self["config"] = path

    opt_c = opt_config

    def postOptions(self) -> None:
        if self["check"] and self["print-toml"]:
            print("sockproxy: --check and --print-toml: give one of them", file=self.stderr)
            raise SystemExit(1)
        try:
            self["configObject"] = self.buildConfig()
        except ConfigError as e:
            for problem in e.problems:
                print(f"sockproxy: {problem}", file=self.stderr)
            raise SystemExit(1) from None
        config = self["configObject"]
        if self["check"] or self["print-toml"]:
            # Notices (e.g. what a lighttpd.conf holds that is ignored) go
            # to stderr, so that --print-toml's output stays valid TOML.
            for notice in config.notices:
                print(f"sockproxy: notice: {notice}", file=self.stderr)
        if self["print-toml"]:
            print(renderToml(config), end="", file=self.stdout)
            raise SystemExit(0)
        if self["check"]:
            print(describeConfig(config), file=self.stdout)
            raise SystemExit(0)
        if self["take-over"]:
            self["received"] = self._takeOver(config)

    def _takeOver(self, config: Config) -> Any:
        """
        Receive the listening sockets of the process serving on the
        configuration's C{takeover-socket}.

        Done here, while twistd parses its command line: twistd next checks
        its pidfile, which the old process removes as it hands over (see
        L{txsockproxy.takeover.TwistdPidfile}).

        @return: what was received, or L{None}: no process listens there
            (the listeners are bound as in any start).
        """
        from txsockproxy.takeover import TakeoverError

        path = config.takeoverSocket
        if not path:
            print("sockproxy: --take-over: the configuration has no takeover-socket",
                  file=self.stderr)
            raise SystemExit(1)
        # A root process that drops to twistd's -u may take over from one
        # that runs as that uid already.
        twistd: Any = getattr(self, "parent", None)
        drop = twistd.get("uid") if hasattr(twistd, "get") else None
        try:
            received = self.receive(path, [drop] if isinstance(drop, int) else [])
        except TakeoverError as e:
            print(f"sockproxy: take-over: {e}; the running process is left as it was",
                  file=self.stderr)
            raise SystemExit(1) from None
        if received is None:
            _log.warn("take-over: no process listens on {path}: binding the listen endpoints",
                      path=path)
        else:
            _log.info("take-over: received {count} listening socket(s) from pid {pid}",
                      count=len(received.sockets), pid=received.pid)
        return received

    def buildConfig(self) -> Config:
        """
        The configuration the options describe.

        @raise ConfigError: the options or the file are invalid, or
            contradict each other.
        """
        debug: Optional[int] = None
        if self["debug"] is not None:
            try:
                debug = int(self["debug"])
            except ValueError:
                raise ConfigError(
                    [Problem(_COMMAND_LINE, None, "--debug",
                             f"must be an integer 0 to 3, not {self['debug']!r}")]
                ) from None
            if not 0 <= debug <= 3:
                raise ConfigError(
                    [Problem(_COMMAND_LINE, None, "--debug", f"must be 0 to 3, not {debug}")]
                )
        if self["config"] is not None:
            mixed = [
                name for name in ("listen", "backend", "balance", "status") if self[name]
            ]
            if mixed:
                raise ConfigError(
                    [
                        Problem(
                            _COMMAND_LINE, None, "--" + name,
                            "cannot be combined with --config: put it in the file "
                            "(only --debug overrides the file)",
                        )
                        for name in mixed
                    ]
                )
            config = loadConfig(self["config"])
            if debug is not None:
                config = replace(config, debug=debug)
            return config
        if not self["listen"] and not self["backend"]:
            raise ConfigError(
                [Problem(_COMMAND_LINE, None, "",
                         "nothing to do: give --config FILE, or --listen and --backend")]
            )
        return configFromArguments(
            self["listen"], self["backend"], self["balance"], debug or 0,
            status=self["status"],
        )


def makeService(options: Options, reactor: Any = None) -> Any:
    """
    Build the proxy service from parsed L{Options}.
    """
    from txsockproxy.service import StartupError, makeProxyService
    from txsockproxy.workers import REUSEPORT, SOCKETS_VARIABLE, workerCount

    config = options["configObject"]
    reactorChoice = "given by the program that embeds the proxy"
    if reactor is None:
        # Unless twistd --reactor chose one already: the accelerator's epoll
        # reactor, where it applies (see txsockproxy.accelerator).
        from txsockproxy.accelerator import installReactor, setting

        reactorChoice = (
            installReactor(setting(config.accelerator)) or "chosen with twistd --reactor"
        )
    for notice in options["configObject"].notices:
        # Logged before twistd starts its log observers: buffered, and
        # written once logging begins.
        _log.warn("config notice: {notice}", notice=notice)
    count = workerCount(config.workers) if options["config"] is not None else 1
    received = options["received"]
    service: Any
    if count > 1:
        # The parent binds; worker processes serve (txsockproxy.workers).
        from txsockproxy.workers import WorkersService

        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        service = WorkersService(
            config, reactor, options["config"], count,
            debug=config.debug if options["debug"] is not None else None,
            reactorName=(getattr(options, "parent", None) or {}).get("reactor"),
            sockets=os.environ.get(SOCKETS_VARIABLE, "").strip().lower() or REUSEPORT,
            inherited=_kept(received, config),
            inheritedExtra=received.extra if received is not None else None,
        )
    elif received is not None:
        from txsockproxy.takeover import TakenOverProxyService

        service = TakenOverProxyService(config, _reactor(reactor), configPath=options["config"],
                                        inherited=_kept(received, config))
    else:
        try:
            service = makeProxyService(config, reactor, configPath=options["config"])
        except StartupError as e:
            # What the configuration's checks could not foresee (OpenSSL
            # refusing certificates it read): one line, as a config error.
            print(f"sockproxy: {e}", file=options.stderr)
            raise SystemExit(1) from None
    service.reactorChoice = reactorChoice
    if options["debug"] is not None:
        # --debug overrides the file's debug on reload too.
        debug = options["configObject"].debug
        service.loader = lambda path: replace(loadConfig(path), debug=debug)
    twistd = getattr(options, "parent", None)
    stranded = _strandedPidfile(twistd)
    if stranded is not None:
        _log.warn("{pidfile} will be left behind at exit: {reason}",
                  pidfile=stranded[0], reason=stranded[1])
    if config.takeoverSocket:
        _addTakeover(service, config.takeoverSocket, _reactor(reactor), received, twistd)
    onStartupError = _StartupErrorExit(twistd)
    service.onStartupError = onStartupError
    # Run by twistd or twist: SIGHUP reloads the configuration file.
    service.handleSignals = True
    result: Any = service
    if _beforeDaemonizing(twistd):
        # Bind now, in the process the user started: a listener that cannot
        # be bound is then one plain line on stderr, and twistd never forks.
        # After the fork, twistd's waiting parent would print the child's
        # reason as a bytes literal (b'Address already in use...').
        onStartupError.stderr = options.stderr
        service.privilegedStartService()
        onStartupError.stderr = None
        result = _BoundBeforeDaemonizing(service)
    # What start-up made (modules, plugins, the configuration) lives as long
    # as the process: keep it out of the cyclic collector's full passes,
    # which otherwise walk it every few thousand connections.
    gc.collect()
    gc.freeze()
    return result


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        return globalReactor
    return reactor


def _kept(received: Any, config: Config) -> Any:
    """
    The sockets C{received} in a take-over that C{config} has listeners
    for (the others are closed), or L{None}: nothing was taken over.
    """
    if received is None:
        return None
    from txsockproxy.service import listenKeys

    for desc in received.keep(listenKeys(config)):
        _log.info("take-over: closed {listen}: not in this configuration", listen=desc)
    # Held before anything binds: the listeners taken over find their
    # addresses' locks theirs.
    received.adoptLocks()
    return received.sockets


def _receive(path: str, peerUids: list[int]) -> Any:
    from txsockproxy.takeover import receive

    return receive(path, peerUids=peerUids)


def _addTakeover(service: Any, path: str, reactor: Any, received: Any, twistd: Any) -> None:
    """
    Make C{service} hand its listening sockets to a process that takes over
    on C{path}, and, when it took them over itself (C{received}), tell the
    old process that it serves once it has started.
    """
    from txsockproxy.service import listenKeys
    from txsockproxy.takeover import TakeoverService, TwistdPidfile

    def listening() -> list[Any]:
        keyed = getattr(service, "keyedListeners", None)
        if keyed is not None:
            # The workers' parent: it holds the sockets.
            return list(keyed())
        return list(zip(listenKeys(service.config), service.listeners, strict=True))

    takeover = TakeoverService(
        path, reactor, listening, reactor.stop, received=received,
        pidfile=TwistdPidfile(twistd) if hasattr(twistd, "get") else None,
        # The workers' parent serves once its workers do.
        serving=getattr(service, "whenServing", None),
        extraSockets=getattr(service, "extraSockets", lambda listener: []),
    )
    takeover.setServiceParent(service)


def _beforeDaemonizing(twistd: Any) -> bool:
    """
    Whether C{twistd} (the options of the command that runs the plugin, if
    any) are those of a twistd that will daemonize and has not forked yet.

    Not with C{--chroot} or C{--rundir}: twistd applies them before it
    forks, and a relative unix socket path must mean the same as it does
    without them.
    """
    if not hasattr(twistd, "get") or "nodaemon" not in twistd:
        return False
    return (
        not twistd["nodaemon"]
        and twistd.get("statusPipe") is None
        and twistd.get("chroot") is None
        and twistd.get("rundir", ".") == "."
    )


def _strandedPidfile(twistd: Any) -> Optional[tuple[str, str]]:
    """
    The pidfile a twistd with C{--uid} writes as root but, once it has
    switched user, cannot delete at exit, and why; or C{None}.

    Deleting a file takes write permission on its directory (and, in a
    sticky directory such as C{/tmp}, owning the file or the directory).
    """
    if not hasattr(twistd, "get") or twistd.get("chroot") is not None:
        return None
    uid, pidfile = twistd.get("uid"), twistd.get("pidfile")
    if uid is None or uid == 0 or not pidfile:
        return None
    gid = twistd.get("gid")
    try:
        entry: Any = pwd.getpwuid(uid)
    except KeyError:
        entry = None
    if gid is None:
        if entry is None:
            return None
        gid = entry.pw_gid
    groups = set(os.getgrouplist(entry.pw_name, gid)) if entry is not None else {gid}
    path = os.path.abspath(os.path.join(twistd.get("rundir") or ".", pidfile))
    directory = os.path.dirname(path)
    advice = f"give the pidfile a directory of its own that uid {uid} owns, or run without one"

    def allowed(st: os.stat_result, user: int, group: int, other: int) -> bool:
        if st.st_uid == uid:
            return st.st_mode & user == user
        if st.st_gid in groups:
            return st.st_mode & group == group
        return st.st_mode & other == other

    try:
        st = os.stat(directory)
        parent = directory
        while True:
            if not allowed(os.stat(parent), stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
                return path, f"uid {uid} cannot enter {parent}; {advice}"
            if parent == os.path.dirname(parent):
                break
            parent = os.path.dirname(parent)
    except OSError:
        return None
    if not allowed(st, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH):
        return path, f"uid {uid} cannot write to {directory}; {advice}"
    if st.st_mode & stat.S_ISVTX and st.st_uid != uid:
        return path, f"{directory} is sticky and the pidfile is root's; {advice}"
    return None


class _BoundBeforeDaemonizing(MultiService):
    """
    The proxy service under a daemonizing twistd, its listeners bound already
    by L{makeService}: twistd's privileged start, after the fork, does not
    bind them again.
    """

    def __init__(self, proxy: Service) -> None:
        super().__init__()
        self.proxy = proxy
        proxy.setServiceParent(self)

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)


class _StartupErrorExit:
    """
    Ends start-up when the service cannot start (e.g. a listener cannot
    bind): one log line, exit status 1, no traceback. Before a daemonizing
    twistd forks, the line goes to stderr instead. After the fork, the reason
    is also handed to the waiting parent process (as twistd does for
    exceptions; it prints it as a bytes literal) and the pidfile is removed.
    """

    log = Logger()

    def __init__(self, twistdOptions: Any) -> None:
        # twistd's own options: a daemonizing twistd puts the pipe to its
        # waiting parent there ("statusPipe") once it has forked.
        self._options = twistdOptions
        # Set while binding before twistd daemonizes: its log is not open
        # yet, and the error is printed here instead, like the config's.
        self.stderr: Optional[TextIO] = None

    def __call__(self, error: Exception) -> None:
        if self.stderr is not None:
            # Not logged as well: before logging begins, Twisted copies
            # critical events to stderr, which would say it twice.
            print(f"sockproxy: {error}", file=self.stderr)
            raise SystemExit(1)
        self.log.critical("{error}", error=str(error))
        options = self._options
        pipe = options.get("statusPipe") if hasattr(options, "get") else None
        if pipe is not None:
            # First, so that the pidfile is gone by the time the waiting
            # parent (and the shell that started it) is told.
            pidfile = options.get("pidfile")
            if pidfile:
                try:
                    os.remove(pidfile)
                except OSError:
                    pass
            # twistd's parent prints what follows the first two bytes.
            message = ("1 " + str(error)).encode("ascii", "backslashreplace")[:100]
            try:
                os.write(pipe, message)
                os.close(pipe)
            except OSError:
                pass
        raise SystemExit(1)

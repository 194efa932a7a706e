"""
The status site of an instance run with worker processes, served by the
parent (L{txsockproxy.workers}): at each request it asks every worker for a
snapshot (each within a bounded time; one that does not answer is shown as
such) and shows the totals and a per-worker breakdown.

 - C{/status.json}: the document a single process serves, its counters the
   sums of the workers' (L{mergeDocuments}), plus C{"workers"}: each
   worker's number, pid, state, restarts and own document (or why not);
 - C{/metrics}: the sums under the usual names (dashboards keep working),
   and each worker's series as C{sockproxy_worker_*} with a C{worker} label
   (L{mergeMetrics}), and C{sockproxy_workers_serving},
   C{sockproxy_worker_restarts};
 - C{/server-statistics}: lighttpd's counters, summed;
 - C{/}: the page, of the totals, with a table of the workers;
 - C{POST /backends/PROXY/LABEL/ACTION}: the admin action, checked against
   the token here and applied in every worker.
"""

from __future__ import annotations

import hmac
import html
import json
import re
from typing import Any, Optional, Protocol, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txsockproxy.config import StatusConfig
from txsockproxy.status import StatusSite, StatusView, statusPage

# Keys whose values are not summed across workers: the first worker's is
# shown (settings, and what is the same in every worker), or for these,
# the given rule.
_FIRST = frozenset({
    "version", "twisted", "python", "name", "listen", "balance", "label", "endpoint",
    "weight", "kind", "names", "route", "last_error", "last_result",
})
_MAX = frozenset({"retry_in", "uptime"})
_MIN = frozenset({"last_change"})
# The state a backend shows when workers see it differently: the one most
# worth an operator's attention first.
_STATE_ORDER = ("failing", "unhealthy", "draining", "maintenance", "disabled", "down", "up")


def _worse(a: Any, b: Any) -> Any:
    order = {state: i for i, state in enumerate(_STATE_ORDER)}
    return a if order.get(a, len(order)) <= order.get(b, len(order)) else b


def _merge(key: str, values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if key in _FIRST:
        return first
    if isinstance(first, bool):
        return any(present) if key != "serving" else first
    if isinstance(first, (int, float)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in present
    ):
        if key in _MAX:
            return max(present)
        if key in _MIN:
            return min(present)
        total = sum(present)
        return round(total, 3) if isinstance(total, float) else total
    if isinstance(first, dict) and all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: _merge(k, [v.get(k) for v in present]) for k in keys}
    if isinstance(first, list) and all(isinstance(v, list) for v in present):
        items = [item for v in present for item in v]
        if items and all(isinstance(item, dict) for item in items):
            named = _byName(present)
            if named is not None:
                return [_merge(key, group) for group in named]
            if all(len(v) == len(first) for v in present):
                return [_merge(key, [v[i] for v in present]) for i in range(len(first))]
        return first
    if key in ("state", "legacy_state"):
        result = first
        for value in present[1:]:
            result = _worse(result, value)
        return result
    return first


def _byName(lists: list[list[dict[str, Any]]]) -> Optional[list[list[dict[str, Any]]]]:
    """
    The items of C{lists} grouped by their C{label} (backends) or C{name}
    (proxies, routes), in the order each first appears; or L{None} when
    some item has neither. Workers may list different backends for a while
    (those a DNS name gives change as each worker resolves it).
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for items in lists:
        for item in items:
            key = ("label", item["label"]) if "label" in item else (
                ("name", item["name"]) if "name" in item else None)
            if key is None:
                return None
            groups.setdefault(key, []).append(item)
    return list(groups.values())


def mergeDocuments(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """
    The C{/status.json} document of an instance whose workers' documents
    are C{documents} (all of the same configuration): counters, active
    sessions, bytes, rates and limit shares are summed; settings are the
    first worker's; a backend's state is the one most worth attention among
    the workers' (a backend one worker finds failing shows as failing);
    the uptime is the longest.
    """
    if not documents:
        return {}
    merged: dict[str, Any] = _merge("", list(documents))
    return merged


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\S+)?$")


def _withWorker(labels: Optional[str], index: int) -> str:
    inner = labels[1:-1] if labels else ""
    return "{" + (inner + "," if inner else "") + f'worker="{index}"' + "}"


def mergeMetrics(texts: Sequence[tuple[int, str]]) -> str:
    """
    One Prometheus text exposition of the workers' (C{(number, text)}):
    each C{sockproxy_*} sample summed across the workers under its own
    name, then every sample of each worker (its C{process_*} too) renamed
    C{sockproxy_worker_*} (C{process_*} as C{sockproxy_worker_process_*})
    with a C{worker} label, so that a query summing the usual names does
    not count anything twice.
    """
    sums: dict[tuple[str, str], float] = {}
    order: list[tuple[str, str]] = []
    meta: dict[str, list[str]] = {}
    perWorker: dict[str, list[str]] = {}
    workerMeta: dict[str, list[str]] = {}
    for index, text in texts:
        for line in text.splitlines():
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    if name.startswith("sockproxy_"):
                        meta.setdefault(name, [])
                        if line not in meta[name]:
                            meta[name].append(line)
                    renamed = _workerName(name)
                    workerLine = " ".join(parts[:2] + [renamed] + parts[3:])
                    workerMeta.setdefault(renamed, [])
                    if workerLine not in workerMeta[renamed]:
                        workerMeta[renamed].append(workerLine)
                continue
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, labels, value = match.group(1), match.group(2) or "", match.group(3)
            family = _familyOf(name, meta)
            if name.startswith("sockproxy_") and family is not None:
                try:
                    number = float(value)
                except ValueError:
                    continue
                key = (name, labels)
                if key not in sums:
                    order.append(key)
                    sums[key] = 0.0
                # Build information is the same in every worker: not summed.
                sums[key] = number if name == "sockproxy_build_info" else sums[key] + number
            renamed = _workerName(name)
            workerFamily = _familyOf(renamed, workerMeta) or renamed
            perWorker.setdefault(workerFamily, []).append(
                f"{renamed}{_withWorker(labels or None, index)} {value}")
    lines: list[str] = []
    written: set[str] = set()
    for name, labels in order:
        family = _familyOf(name, meta) or name
        if family not in written:
            written.add(family)
            lines.extend(meta.get(family, []))
        lines.append(f"{name}{labels} {_number(sums[(name, labels)])}")
    for family, samples in perWorker.items():
        lines.extend(workerMeta.get(family, []))
        lines.extend(samples)
    return "\n".join(lines) + "\n"


def _workerName(name: str) -> str:
    if name.startswith("sockproxy_"):
        return "sockproxy_worker_" + name[len("sockproxy_"):]
    return "sockproxy_worker_" + name


def _familyOf(name: str, meta: dict[str, list[str]]) -> Optional[str]:
    # A sample's family: its name, or its name less a counter's or
    # histogram's suffix.
    if name in meta:
        return name
    for suffix in ("_total", "_created", "_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name[: -len(suffix)] in meta:
            return name[: -len(suffix)]
    return None


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


def mergeStatistics(texts: Sequence[str]) -> str:
    """
    lighttpd's C{statistics-url} text of an instance: each counter summed
    across the workers' texts, in lighttpd's order (by length, then name).
    """
    counters: dict[str, int] = {}
    for text in texts:
        for line in text.splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                counters[name] = counters.get(name, 0) + int(value)
    return "".join(f"{name}: {value}\n"
                   for name, value in sorted(counters.items(), key=lambda i: (len(i[0]), i[0])))


class Parent(Protocol):
    """
    What the instance's status site reads of the parent
    (L{txsockproxy.workers.WorkersService}).
    """

    reactor: Any

    @property
    def adminToken(self) -> str:
        ...

    def snapshots(self) -> defer.Deferred[Any]:
        ...

    def admin(self, proxy: str, label: str, action: str,
              timeout: Optional[float]) -> defer.Deferred[Any]:
        ...


def _workersTable(snapshots: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "worker": s.index,
            "pid": s.pid,
            "state": s.state,
            "restarts": s.restarts,
            "answered": s.snapshot is not None,
            "problem": s.problem or None,
            "status": (s.snapshot or {}).get("status"),
        }
        for s in snapshots
    ]


def instanceDocument(snapshots: Sequence[Any]) -> dict[str, Any]:
    """
    The instance's C{/status.json}: the merged document of the workers
    that answered, and C{workers}, each worker's own.
    """
    documents = [s.snapshot["status"] for s in snapshots
                 if s.snapshot is not None and "status" in s.snapshot]
    merged = mergeDocuments(documents)
    merged["workers"] = _workersTable(snapshots)
    return merged


def _whenGone(request: Request) -> list[Failure]:
    """
    A list that gets why C{request}'s connection was lost, if it is lost
    before the request is finished: an answer that comes later must not be
    written (L{Request.finish} raises then).
    """
    gone: list[Failure] = []
    request.notifyFinish().addErrback(gone.append)
    return gone


class _Deferring(Resource):
    """
    A leaf answering GET from the workers' snapshots.
    """

    isLeaf = True
    contentType = b"text/plain; charset=utf-8"
    log = Logger()

    def __init__(self, parent: Parent) -> None:
        super().__init__()
        self._parent = parent

    def body(self, snapshots: Sequence[Any]) -> bytes:
        raise NotImplementedError()

    def render_GET(self, request: Request) -> Any:
        gone = _whenGone(request)

        def answer(snapshots: Sequence[Any]) -> None:
            if request.finished or gone:
                return
            body = self.body(snapshots)
            request.setHeader(b"content-type", self.contentType)
            request.setHeader(b"cache-control", b"no-store")
            # Also for HEAD, whose body the request drops.
            request.setHeader(b"content-length", b"%d" % (len(body),))
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            self.log.failure("status: rendering {uri}", failure, uri=request.uri)
            if not (request.finished or gone):
                request.setResponseCode(500)
                request.finish()

        self._parent.snapshots().addCallback(answer).addErrback(failed)
        return NOT_DONE_YET


class _JSON(_Deferring):
    contentType = b"application/json"

    def body(self, snapshots: Sequence[Any]) -> bytes:
        return json.dumps(instanceDocument(snapshots), indent=1).encode("utf-8")


class _Metrics(_Deferring):
    contentType = b"text/plain; version=0.0.4; charset=utf-8"

    def body(self, snapshots: Sequence[Any]) -> bytes:
        texts = [(s.index, s.snapshot["metrics"]) for s in snapshots
                 if s.snapshot is not None and "metrics" in s.snapshot]
        extra = [
            "# HELP sockproxy_workers_serving Worker processes serving now.",
            "# TYPE sockproxy_workers_serving gauge",
            f"sockproxy_workers_serving {sum(1 for s in snapshots if s.state == 'serving')}",
            "# HELP sockproxy_worker_restarts Times a worker process was restarted.",
            "# TYPE sockproxy_worker_restarts counter",
        ] + [f'sockproxy_worker_restarts_total{{worker="{s.index}"}} {s.restarts}'
             for s in snapshots] + [
            "# HELP sockproxy_worker_answered Whether the worker answered this scrape.",
            "# TYPE sockproxy_worker_answered gauge",
        ] + [f'sockproxy_worker_answered{{worker="{s.index}"}} {int(s.snapshot is not None)}'
             for s in snapshots]
        return (mergeMetrics(texts) + "\n".join(extra) + "\n").encode("utf-8")


class _Statistics(_Deferring):
    def body(self, snapshots: Sequence[Any]) -> bytes:
        texts = [s.snapshot["statistics"] for s in snapshots
                 if s.snapshot is not None and "statistics" in s.snapshot]
        return mergeStatistics(texts).encode("utf-8")


class _Page(_Deferring):
    contentType = b"text/html; charset=utf-8"

    def __init__(self, parent: Parent, view: StatusView) -> None:
        super().__init__(parent)
        self._view = view

    def body(self, snapshots: Sequence[Any]) -> bytes:
        document = instanceDocument(snapshots)
        if "proxies" not in document:
            document.update({"version": "?", "twisted": "?", "python": "?", "uptime": 0,
                             "proxies": [], "closed_at_accept": 0})
        page = statusPage(self._view, document=document)
        e = html.escape
        rows = "".join(
            f'<tr data-worker="{w["worker"]}"><td>{w["worker"]}</td><td>{w["pid"] or ""}</td>'
            f'<td>{e(w["state"])}</td><td>{w["restarts"]}</td>'
            f'<td>{"yes" if w["answered"] else e(w["problem"] or "no")}</td></tr>'
            for w in document["workers"]
        )
        table = (f"<h2>workers ({len(document['workers'])})</h2>\n<table class=\"workers\">"
                 "<thead><tr><th>worker</th><th>pid</th><th>state</th><th>restarts</th>"
                 f"<th>answered</th></tr></thead><tbody>{rows}</tbody></table>\n")
        return page.replace("</body>", table + "</body>", 1).encode("utf-8")


class _Admin(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, parent: Parent) -> None:
        super().__init__()
        self._parent = parent

    def _reply(self, request: Request, code: int, document: dict[str, Any]) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return (json.dumps(document) + "\n").encode("utf-8")

    def render_POST(self, request: Request) -> Any:
        token = self._parent.adminToken
        if not token:
            return self._reply(request, 403, {
                "error": "admin actions are disabled: set [status] admin-token-file"})
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            request.setHeader(b"www-authenticate", b'Bearer realm="sockproxy"')
            return self._reply(request, 401, {"error": "needs Authorization: Bearer <token>"})
        if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
            return self._reply(request, 403, {"error": "wrong token"})
        parts = [p.decode("utf-8", "replace") for p in request.postpath or []]
        if len(parts) != 3:
            return self._reply(request, 404, {
                "error": "use POST /backends/<proxy>/<label>/drain|disable|enable"})
        timeout: Optional[float] = None
        raw = (request.args or {}).get(b"timeout")
        if raw:
            try:
                timeout = float(raw[0].decode("latin-1")[:30])
                if not (timeout >= 0 and timeout < 1e9):
                    raise ValueError(timeout)
            except ValueError:
                return self._reply(request, 400, {
                    "error": "timeout must be a number of seconds, 0 or more"})

        gone = _whenGone(request)

        def answer(results: list[tuple[int, int, str]]) -> None:
            # Done in the workers whether or not the client is still there.
            self.log.info("status: set backend {label} of proxy {proxy} to {action} "
                          "in {count} workers", label=parts[1], proxy=parts[0],
                          action=parts[2], count=len(results))
            if request.finished or gone:
                return
            codes = [code for _, code, _ in results]
            code = max(codes) if codes else 503
            workers = [{"worker": i, "code": c, "result": json.loads(body)}
                       for i, c, body in results]
            first = workers[0]["result"] if workers else {"error": "no worker serving"}
            request.write(self._reply(request, code, {**first, "workers": workers}))
            request.finish()

        def failed(failure: Failure) -> None:
            self.log.failure("status: admin action {action} on backend {label} of proxy "
                             "{proxy}", failure, label=parts[1], proxy=parts[0],
                             action=parts[2])
            if not (request.finished or gone):
                request.write(self._reply(request, 500, {"error": "the action failed"}))
                request.finish()

        self._parent.admin(parts[0], parts[1], parts[2], timeout).addCallback(
            answer).addErrback(failed)
        return NOT_DONE_YET


def instanceStatusSite(parent: Parent, status: StatusConfig) -> StatusSite:
    """
    The status site of an instance with workers, reading C{parent}.
    """
    view = StatusView(clock=parent.reactor)
    root = Resource()
    page = _Page(parent, view)
    root.putChild(b"", page)
    root.putChild(b"index.html", page)
    root.putChild(b"status.json", _JSON(parent))
    root.putChild(b"metrics", _Metrics(parent))
    root.putChild(b"server-statistics", _Statistics(parent))
    root.putChild(b"backends", _Admin(parent))
    return StatusSite(root, maxConnections=status.maxConnections,
                      requestTimeout=status.requestTimeout, maxBodySize=status.maxBodySize,
                      reactor=parent.reactor)


__all__ = [
    "instanceDocument", "instanceStatusSite", "mergeDocuments", "mergeMetrics",
    "mergeStatistics",
]

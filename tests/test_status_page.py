"""
Tests for the HTML status page of L{txsockproxy.status} and for the rates it
shows (L{txsockproxy.rates}): rendered in memory from a L{StatusView} of
pools built by hand, checked as HTML, and shown in headless Chromium.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.test_status import render
from txsockproxy.backends import BackendPool
from txsockproxy.balancers import balancerFactory
from txsockproxy.config import BackendConfig, Protection, ProxyConfig
from txsockproxy.rates import POINT_SAMPLES, POINTS, RateTracker
from txsockproxy.status import (
    VERSIONS,
    StatusSite,
    StatusView,
    humanBytes,
    humanDuration,
    statusDocument,
    statusPage,
    statusResource,
)

CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1280, 900


def makeView(proxies: int = 2, backends: int = 3, clock: Optional[Clock] = None) -> StatusView:
    """
    A view of C{proxies} proxies ("web", "db", then "p2"...) of C{backends}
    backends each, built without a service, on C{clock}, with counters of
    sessions, bytes, queue and limits set.
    """
    clock = clock or Clock()
    clock.advance(1_800_000_000)
    pools = {}
    for p in range(proxies):
        name = ["web", "db"][p] if p < 2 else f"p{p}"
        configs = tuple(
            BackendConfig(endpoint=f"tcp:host=10.0.{p}.{b + 1}:port=8080", label=f"{name}-{b}",
                          maxConnections=100 if b == 0 else 0)
            for b in range(backends)
        )
        proxy = ProxyConfig(
            name=name, listen=(f"tcp:{8000 + p}",), backends=configs,
            protection=Protection(maxConnections=500, maxQueue=50),
        )
        pool = BackendPool.fromConfig(proxy, balancerFactory("fair")(), clock)
        pool.accepted, pool.active, pool.refused = 1000 * (p + 1), 12, 3
        for i, b in enumerate(pool.backends):
            b.connected, b.active = 300 + i, i % 5
            b.bytesIn, b.bytesOut = 5_000_000 * (i + 1), 40_000 * (i + 1)
        pools[name] = pool
    return StatusView(clock=clock, pools=pools, startedAt=clock.seconds() - 93784)


def _sample(view: StatusView, clock: Clock, seconds: int, sessions: int, moved: int) -> None:
    # Each second, every proxy accepts `sessions`, its first backend connects
    # them and moves `moved` bytes each way.
    for _ in range(seconds):
        for pool in view.pools.values():
            pool.accepted += sessions
            first = pool.backends[0]
            first.connected += sessions
            first.bytesIn += moved
            first.bytesOut += moved
        clock.advance(1)


class _Checker(HTMLParser):
    """
    Collects what a page refers to outside itself, and tags left open.
    """

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "polyline", "polygon"}

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.open: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action") and value is not None:
                self.references.append(value)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.references.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
            return
        self.open.pop()


def pngPixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """
    The width, height and distinct colours of C{data}, an 8-bit RGB or RGBA
    PNG without interlacing (what Chromium writes).
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat = 8, b""
    width = height = depth = kind = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        chunk = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        if chunk == b"IHDR":
            width, height, depth, kind, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, interlace) == (8, 0), (depth, interlace)
        elif chunk == b"IDAT":
            idat += body
        position += 12 + length
    size = {2: 3, 6: 4}[kind]
    raw = zlib.decompress(idat)
    stride = width * size
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        kindOfFilter = raw[start]
        line = bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up = previous[i]
            upLeft = previous[i - size] if i >= size else 0
            if kindOfFilter == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kindOfFilter == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kindOfFilter == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kindOfFilter == 4:
                estimate = left + up - upLeft
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - upLeft)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upLeft
                line[i] = (line[i] + predictor) & 0xFF
        for x in range(0, stride, size):
            colours.add(bytes(line[x:x + 3]))
        previous = line
    return width, height, colours


class HumanUnitsTests(SynchronousTestCase):
    """
    L{humanBytes} and L{humanDuration}.
    """

    def test_bytes(self) -> None:
        """
        Bytes are shown in binary units with one decimal from KiB on.
        """
        self.assertEqual(
            [humanBytes(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30, 2**50)],
            ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB", "1024.0 TiB"],
        )

    def test_duration(self) -> None:
        """
        Durations are shown in their two largest units.
        """
        self.assertEqual(
            [humanDuration(s) for s in (0, 42.7, 182, 18060, 93784, -5)],
            ["0 s", "42 s", "3 min 2 s", "5 h 1 min", "1 d 2 h", "0 s"],
        )


class RateTrackerTests(SynchronousTestCase):
    """
    L{RateTracker} samples counters once a second while started.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.counters: dict[tuple[str, ...], tuple[int, int]] = {("p",): (0, 0)}
        self.tracker = RateTracker(self.clock, lambda: dict(self.counters))

    def grow(self, seconds: int, sessions: int, moved: int) -> None:
        for _ in range(seconds):
            old = self.counters[("p",)]
            self.counters[("p",)] = (old[0] + sessions, old[1] + moved)
            self.clock.advance(1)

    def test_ratesAndHighest(self) -> None:
        """
        The current rate is the last second's; the highest, the highest
        current rate seen.
        """
        self.tracker.start()
        self.grow(3, 10, 1000)
        self.grow(2, 4, 400)
        rate = self.tracker.rate(("p",))
        assert rate is not None
        self.assertEqual(rate.current, (4.0, 400.0))
        self.assertEqual(rate.highest, (10.0, 1000.0))

    def test_history(self) -> None:
        """
        Each point of the history averages C{POINT_SAMPLES} seconds, and at
        most C{POINTS} are kept.
        """
        self.tracker.start()
        self.grow(POINT_SAMPLES, 10, 0)
        self.grow(POINT_SAMPLES, 20, 0)
        rate = self.tracker.rate(("p",))
        assert rate is not None
        self.assertEqual([point[0] for point in rate.history], [10.0, 20.0])
        self.grow(POINT_SAMPLES * (POINTS + 3), 1, 0)
        self.assertEqual(len(rate.history), POINTS)

    def test_counterWentDown(self) -> None:
        """
        A counter lower than at the last sample (a backend replaced by a
        reload) counts as no change, and the next second is measured from
        its new value.
        """
        self.tracker.start()
        self.grow(1, 50, 50)
        self.counters[("p",)] = (3, 3)
        self.clock.advance(1)
        rate = self.tracker.rate(("p",))
        assert rate is not None
        self.assertEqual(rate.current, (0.0, 0.0))
        self.grow(1, 2, 2)
        self.assertEqual(rate.current, (2.0, 2.0))

    def test_forgetsAndLearnsKeys(self) -> None:
        """
        A key no longer read is forgotten; a new one is tracked from its
        first sample.
        """
        self.tracker.start()
        self.counters = {("q",): (5, 5)}
        self.clock.advance(1)
        self.assertIsNone(self.tracker.rate(("p",)))
        self.counters = {("q",): (7, 9)}
        self.clock.advance(1)
        rate = self.tracker.rate(("q",))
        assert rate is not None
        self.assertEqual(rate.current, (2.0, 4.0))

    def test_startStop(self) -> None:
        """
        Sampling runs from the first L{RateTracker.start} to the L{stop}
        that matches the last; stopped, it leaves no call pending.
        """
        self.tracker.start()
        self.tracker.start()
        self.tracker.stop()
        self.assertTrue(self.tracker.running)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.tracker.stop()
        self.assertFalse(self.tracker.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.tracker.stop()
        self.grow(3, 10, 10)
        rate = self.tracker.rate(("p",))
        assert rate is not None
        self.assertEqual(rate.current, (0.0, 0.0))

    def test_siteStartsAndStops(self) -> None:
        """
        A L{StatusSite} samples its view's rates while it listens (from
        C{startFactory} to C{stopFactory}).
        """
        view = makeView(clock=self.clock)
        site = StatusSite(statusResource(view))
        site.doStart()
        self.assertTrue(view.rates.running)
        _sample(view, self.clock, 2, 7, 100)
        self.assertEqual(statusDocument(view)["proxies"][0]["rates"]["sessions"], 7.0)
        site.doStop()
        self.assertFalse(view.rates.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PageTests(SynchronousTestCase):
    """
    The HTML page: what it shows, and that it stands alone.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.view = makeView(clock=self.clock)
        self.view.rates.start()
        self.addCleanup(self.view.rates.stop)
        _sample(self.view, self.clock, 30, 20, 1_000_000)

    def test_header(self) -> None:
        """
        The page starts with the versions of txsockproxy, Twisted and
        Python and the uptime in words.
        """
        page = statusPage(self.view)
        self.assertIn(f'txsockproxy <b class="version">{VERSIONS["version"]}</b>', page)
        self.assertIn(f"Twisted {VERSIONS['twisted']} · Python {VERSIONS['python']}", page)
        # 93784 s before the view's start, and 30 s of samples since.
        self.assertIn('up <b class="uptime">1 d 2 h</b>', page)

    def test_standsAlone(self) -> None:
        """
        The page refers to nothing outside the site (no scripts, fonts,
        styles or images of the net), and parses with every tag closed.
        """
        page = statusPage(self.view)
        checker = _Checker()
        checker.feed(page)
        checker.close()
        self.assertEqual(checker.errors, [])
        self.assertEqual(checker.open, [])
        self.assertEqual(checker.references,
                         ["status.json", "metrics", "server-statistics"])
        self.assertNotIn("http://", page)
        self.assertNotIn("https://", page)
        self.assertNotIn("<script", page)

    def test_ratesAndSparklines(self) -> None:
        """
        Each proxy shows its session and byte rates, now and at most, and
        an SVG line of each over the last minutes, from the same counters
        as C{/metrics}.
        """
        page = statusPage(self.view)
        self.assertEqual(page.count('<svg class="spark"'), 4)
        self.assertIn("sessions/s: now 20, highest 5 s average in 10 min 20", page)
        # 1 MB each way, each second.
        self.assertIn("bytes/s: now 1.9 MiB, highest 5 s average in 10 min 1.9 MiB", page)
        # 30 s of samples: 6 points.
        start = page.index('<polyline points="') + len('<polyline points="')
        points = page[start:page.index('"', start)].split()
        self.assertEqual(len(points), 6)
        document = statusDocument(self.view)
        self.assertEqual(document["proxies"][0]["rates"],
                         {"sessions": 20.0, "max_sessions": 20.0, "bytes": 2e6,
                          "max_bytes": 2e6})
        first = document["proxies"][0]["backends"][0]["rates"]
        self.assertEqual((first["sessions"], first["bytes"]), (20.0, 2e6))

    def test_queueAndLimits(self) -> None:
        """
        The proxy's row shows its queue (now, most, limit), its sessions
        (now, serving, limit, total) and why clients were closed; a
        backend's its sessions against its limit, "–" without one.
        """
        pool = self.view.pools["web"]
        pool.admission.maxQueued = 9
        pool.admission.queueFull = 4
        page = statusPage(self.view)
        self.assertIn('<td class="queue">0</td><td>9</td><td>50</td>', page)
        self.assertIn('<td class="serving">0</td><td>500</td><td class="accepted">1600</td>',
                      page)
        self.assertIn('<td class="queue-full">4</td>', page)
        self.assertIn('<td class="active">0</td><td>100</td><td class="connected">900</td>',
                      page)
        self.assertIn('<td class="active">1</td><td class="none">–</td>', page)

    def test_humanBytes(self) -> None:
        """
        Byte counts are shown in binary units, the exact count in the
        cell's title.
        """
        backend = self.view.pools["db"].backends[1]
        backend.bytesIn = 3 * 2**30
        page = statusPage(self.view)
        self.assertIn(f'<td class="bytes-in" title="{3 * 2**30} bytes">3.0 GiB</td>', page)

    def test_states(self) -> None:
        """
        Each state is shown in words and colour: a failing backend with the
        seconds to its retry, an operator's disable as "maintenance".
        """
        web = self.view.pools["web"]
        now = self.clock.seconds()
        web.backends[0].disabledUntil = now + 2.5
        web.setAdminState(web.backends[1], "maintenance")
        web.setAdminState(web.backends[2], "draining")
        page = statusPage(self.view)
        self.assertIn('<td class="state text st-failing">failing (retry in 3 s)</td>', page)
        self.assertIn('<td class="state text st-maintenance">maintenance</td>', page)
        self.assertIn('<td class="state text st-draining">draining</td>', page)
        self.assertIn('<td class="state text st-up">up</td>', page)

    def test_healthCheck(self) -> None:
        """
        A backend's health check, when its status has one, is shown with
        its state, the time since its last change in words, its last
        result, and its counts; a backend up whose checks fail shows
        "unhealthy". A backend without checks shows "–".
        """
        document: dict[str, Any] = statusDocument(self.view)
        first, second, third = document["proxies"][0]["backends"]
        first["check"] = {"state": "down", "last_result": "connection refused",
                          "last_change": 125.0, "checks": 40, "failures": 3}
        second["check"] = {"state": "up", "last_result": "ok",
                           "last_change": self.clock.seconds() - 7200, "checks": 9,
                           "failures": 0}
        third["check"] = None
        page = statusPage(self.view, document=document)
        self.assertIn('<td class="state text st-unhealthy">unhealthy</td>', page)
        self.assertIn('<span class="state st-unhealthy">down</span> for 2 min 5 s'
                      "<small>connection refused · 40 checks, 3 failed</small>", page)
        self.assertIn('<span class="state st-up">up</span> for 2 h 0 min', page)
        self.assertIn('<td class="check none">–</td>', page)

    def test_escaped(self) -> None:
        """
        Text from the config, the backends and the checks is escaped.
        """
        document: dict[str, Any] = statusDocument(self.view)
        backend = document["proxies"][0]["backends"][0]
        backend["last_error"] = "<b>bad</b>"
        backend["check"] = {"state": "down", "last_result": "<i>x</i>", "last_change": 1,
                            "checks": 1, "failures": 1}
        page = statusPage(self.view, document=document)
        self.assertIn("&lt;b&gt;bad&lt;/b&gt;", page)
        self.assertIn("&lt;i&gt;x&lt;/i&gt;", page)
        self.assertNotIn("<i>x", page)


class MetricsTests(SynchronousTestCase):
    """
    C{/metrics} of a view: the build and the process.
    """

    def test_buildAndProcess(self) -> None:
        """
        C{sockproxy_build_info} is 1, labelled with the versions of
        txsockproxy, Twisted and Python; the process collector's
        C{process_*} metrics are there (on Linux).
        """
        body = render(statusResource(makeView()), b"/metrics")[1].decode()
        samples = {
            s.name: s for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        build = samples["sockproxy_build_info"]
        self.assertEqual((build.labels, build.value), (VERSIONS, 1))
        if not os.path.isdir("/proc/self"):
            raise SkipTest("no /proc: no process metrics")
        self.assertGreater(samples["process_open_fds"].value, 0)
        self.assertGreater(samples["process_resident_memory_bytes"].value, 0)


class ChromiumScreenshotIntegrationTests(SynchronousTestCase):
    """
    The page of three proxies, shown by headless Chromium.
    """

    def test_screenshot(self) -> None:
        """
        Headless Chromium renders the page to a screenshot of the window's
        size that is not blank: the colours of the states, the sparklines
        and the text give it many distinct colours.
        """
        if not os.access(CHROMIUM, os.X_OK):
            raise SkipTest(f"{CHROMIUM} is not installed")
        clock = Clock()
        view = makeView(proxies=3, backends=6, clock=clock)
        view.rates.start()
        self.addCleanup(view.rates.stop)
        for step in range(60):
            _sample(view, clock, 5, 5 + step % 13, 200_000 * (1 + step % 7))
        web = view.pools["web"]
        web.backends[1].disabledUntil = clock.seconds() + 3
        web.setAdminState(web.backends[2], "maintenance")
        web.setAdminState(web.backends[3], "draining")
        web.backends[1].lastError = "connection refused"
        document: dict[str, Any] = statusDocument(view)
        document["proxies"][0]["backends"][4]["check"] = {
            "state": "down", "last_result": "expected b'+PONG' not received",
            "last_change": 75, "checks": 120, "failures": 5}
        document["proxies"][0]["backends"][0]["check"] = {
            "state": "up", "last_result": "ok", "last_change": 3600, "checks": 720,
            "failures": 0}
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        pagePath = os.path.join(directory, "status.html")
        with open(pagePath, "w", encoding="utf-8") as f:
            f.write(statusPage(view, document=document))
        shot = os.path.join(directory, "status.png")
        argv = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={os.path.join(directory, 'profile')}",
            f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", f"file://{pagePath}",
        ]
        browser = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, start_new_session=True)

        def endGroup() -> None:
            try:
                os.killpg(browser.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

        self.addCleanup(endGroup)
        try:
            browser.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.fail("chromium took no screenshot within 60 s")
        self.assertEqual(browser.returncode, 0, f"chromium exited {browser.returncode}")
        with open(shot, "rb") as f:
            width, height, colours = pngPixels(f.read())
        print(f"\nstatus page screenshot: {shot} ({len(colours)} colours)")
        self.assertEqual((width, height), (WIDTH, HEIGHT))
        # A blank page has one colour; text alone, a few dozen grey levels.
        self.assertGreater(len(colours), 100)
        # The colours of the states are on the page.
        for colour in ("c8efc8", "f7b9b9", "ffe08a", "c9d3e6"):
            self.assertIn(bytes.fromhex(colour), colours, colour)

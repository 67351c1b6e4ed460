"""``qqfilter serve --metrics HOST:PORT``: Prometheus metrics over HTTP (docs/metrics.md).

The one module that imports prometheus_client, and only ``serve --metrics`` imports it: the
one-shot program, the thin client and a server without --metrics never load it. The process
that decides messages hands a ``Metrics`` (the instruments) to its gate and its connections,
and sets it as the pipeline's observer (qqfilter.pipeline.OBSERVER), which times each check
unit and reports the verdict in the thread that decides the message. ``describe`` adds what
the page says besides: the version, the limits, the process figures; ``publish`` shows a
registry over HTTP.

One process (``--workers 1``): its registry holds the instruments and is served in it. Several
workers: prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the server
before this module is imported): each worker's instruments write to files of its own in that
directory, and the parent serves their sum (``multiprocess``), with the process figures summed
over the parent and its workers (Processes). Gauges of what is held now are ``livesum``: the
parent drops a dead worker's (``worker_ended``).

Every label value comes from the code (check names, policy's verdicts, exit codes, the s/qmail
tags), except a tag a setting names (QQF_SPAMTAG, say, per connection): past LABEL_SETS
verdict/check/tag triples, new tags are counted as ``other``, so no peer grows the registry.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from qqfilter import __version__
from qqfilter.policy import ACCEPT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from http.server import HTTPServer

    from prometheus_client.metrics_core import Metric

    from qqfilter.policy import Verdict
    from qqfilter.qmailqueue import Decision

CHECK_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Seconds: most checks take well under a millisecond, a scan or a DNS deadline seconds."""
MESSAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WAIT_BUCKETS = (0.0001, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LABEL_SETS = 200
"""Verdict/check/tag triples counted apart at most; past that a new tag is ``other``."""
PROBLEMS = (
    "not_allowed",
    "malformed",
    "no_request",
    "closed_unasked",
    "client_gone",
    "internal_error",
    "accept_failed",
    "no_thread",
)
"""What the server counts of connections that end without a decision (docs/metrics.md)."""


class Metrics:
    """The instruments one deciding process updates, in a registry of their own. In a worker
    of several, their values go to the multiprocess directory, and the parent shows the sum."""

    def __init__(self, checks: list[str]) -> None:
        disable_created_metrics()  # a *_created series beside every counter: noise here
        self.registry = registry = CollectorRegistry()
        self.messages = Counter(
            "qqfilter_messages",
            "messages decided, by verdict (accept, reject, tempfail, drop, error), and the check "
            "and s/qmail tag that explain it (empty for a plain accept)",
            ["verdict", "check", "tag"],
            registry=registry,
        )
        self.codes = Counter(
            "qqfilter_exit_codes",
            "messages decided, by the exit code the client ends with (0: handed to qmail-queue)",
            ["code"],
            registry=registry,
        )
        self.check_seconds = Histogram(
            "qqfilter_check_seconds",
            "seconds each check unit took for a message",
            ["check"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.message_seconds = Histogram(
            "qqfilter_message_seconds",
            "seconds from a client's request to the server's answer: spooling, the wait for a "
            "turn, the checks",
            buckets=MESSAGE_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "qqfilter_messages_in_flight",
            "messages the server holds: spooling, waiting for a turn or under the checks",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.checking = Gauge(
            "qqfilter_messages_checking",
            "messages under the checks (holding one of --max turns)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "qqfilter_queue_wait_seconds",
            "seconds a spooled message waited for a turn under the checks (--max)",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.queue_timeouts = Counter(
            "qqfilter_queue_timeouts",
            "messages that waited --wait seconds for a turn and were tempfailed (71)",
            registry=registry,
        )
        self.problems = Counter(
            "qqfilter_connection_problems",
            "connections that ended without a decision, by what happened",
            ["problem"],
            registry=registry,
        )
        self.waiting = Gauge(
            "qqfilter_connections_waiting",
            "connections whose request has not come yet",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.dns_hits = Counter(
            "qqfilter_dns_cache_hits", "DNS answers taken from the cache", registry=registry
        )
        self.dns_misses = Counter(
            "qqfilter_dns_cache_misses",
            "DNS questions the cache could not answer (not there, or expired)",
            registry=registry,
        )
        self.dns_too_big = Counter(
            "qqfilter_dns_cache_too_big",
            "DNS answers not kept: over the size the cache keeps",
            registry=registry,
        )
        self.dns_entries = Gauge(
            "qqfilter_dns_cache_entries",
            "DNS answers in the cache now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._checks = {name: self.check_seconds.labels(name) for name in checks}
        for problem in PROBLEMS:
            self.problems.labels(problem)
        self.messages.labels(ACCEPT, "", "")
        self.codes.labels("0")
        self._seen: set[tuple[str, str, str]] = set()
        self._local = threading.local()
        self._dns_lock = threading.Lock()
        self._dns_seen = (0, 0, 0, 0)

    # the pipeline's observer (qqfilter.pipeline.OBSERVER), in the deciding thread

    def checked(self, check: str, seconds: float) -> None:
        child = self._checks.get(check)
        if child is None:
            child = self._checks[check] = self.check_seconds.labels(check)
        child.observe(seconds)

    def judged(self, verdict: Verdict) -> None:
        self._local.verdict = verdict

    # the server

    def watch(self, decide: Callable[[], Decision]) -> Decision:
        """``decide()``, counted: in flight while it runs, then its verdict, code and time."""
        self._local.verdict = None
        self._local.busy = False
        self.in_flight.inc()
        started = time.monotonic()
        try:
            decision = decide()
        finally:
            self.in_flight.dec()
        self.message_seconds.observe(time.monotonic() - started)
        verdict: Verdict | None = self._local.verdict
        self._local.verdict = None
        action = decision.action
        queued = bool(action.program)
        if verdict is None and self._local.busy:
            labels = ("tempfail", "", "")  # no turn within --wait: a tempfail, as logged
        elif verdict is None or (verdict.action == ACCEPT) != queued:
            labels = ("error", "", "")  # failed before the pipeline's verdict, or after it
        else:
            labels = (verdict.action, verdict.check, verdict.tag)
        if labels not in self._seen:
            if len(self._seen) >= LABEL_SETS:
                labels = (labels[0], labels[1], "other")
            self._seen.add(labels)
        self.messages.labels(*labels).inc()
        self.codes.labels(str(action.code)).inc()
        self.dns()
        return decision

    def waited(self, seconds: float, turn: bool) -> None:
        """A message waited ``seconds`` at the gate: it has its ``turn``, or timed out."""
        self.queue_wait.observe(seconds)
        if turn:
            self.checking.inc()
        else:
            self._local.busy = True
            self.queue_timeouts.inc()

    def problem(self, what: str) -> None:
        self.problems.labels(what).inc()

    def dns(self) -> None:
        """Bring the DNS cache figures up to the resolver's own counts (as each message ends,
        and in the accept loop: a SIGHUP's emptied cache shows within a moment). Nothing is
        counted on the lookup path; the parent of several workers cannot ask their caches."""
        from qqfilter.shared import resolver

        with self._dns_lock:  # each count added once, whichever thread sees it first
            now = resolver.cache_statistics()
            seen, self._dns_seen = self._dns_seen, now
            if now == seen:
                return
            counters = (self.dns_hits, self.dns_misses, self.dns_too_big)
            for counter, new, old in zip(counters, now[:3], seen[:3], strict=True):
                if new > old:
                    counter.inc(new - old)
            self.dns_entries.set(now[3])


def describe(
    registry: CollectorRegistry,
    *,
    limit: int,
    connections: int,
    processes: Callable[[], list[int]] | None = None,
    spent: Callable[[], float] | None = None,
) -> None:
    """Add to ``registry`` what the page shows besides the instruments: the version, the
    limits (the whole server's), the platform, and the process figures: this process's (with
    its garbage collector's), or, given ``processes`` (the parent's pid first, then its
    workers') and ``spent`` (the CPU seconds of workers that have ended), their sum."""
    registry.register(Fixed(limit, connections))
    PlatformCollector(registry=registry)
    if processes is None:
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
    else:
        registry.register(Processes(processes, spent or float))


def multiprocess(directory: str) -> CollectorRegistry:
    """A registry showing the sum of every worker's instruments kept in ``directory``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def worker_ended(pid: int, directory: str) -> None:
    """Drop the gauges of what worker ``pid`` held (it has ended); its counts stay in."""
    mark_process_dead(pid, directory)


def publish(registry: CollectorRegistry, host: str, port: int) -> tuple[HTTPServer, str, int]:
    """Start the HTTP server showing ``registry`` on ``host`` and ``port`` (0: any free one),
    in a thread of its own; the server and the address it listens on. OSError when it
    cannot."""
    httpd, _thread = start_http_server(port, host, registry=registry)
    address = httpd.server_address
    return httpd, str(address[0]), int(address[1])


class Fixed(Collector):
    """What does not change while the server runs: the version, --max and --connections."""

    def __init__(self, limit: int, connections: int) -> None:
        self.limit = limit
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("qqfilter", "the qqfilter serving", value={"version": __version__})
        yield GaugeMetricFamily(
            "qqfilter_limit_messages", "--max: messages under the checks at once", self.limit
        )
        yield GaugeMetricFamily(
            "qqfilter_limit_connections",
            "--connections: connections served at once",
            self.connections,
        )


SUMMED = frozenset(
    {
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
    }
)
"""The process figures that add up over the parent and its workers; the others (the start
time, the descriptor limit) are the parent's."""


class Processes(Collector):
    """prometheus_client's process figures for the parent and its workers, summed, with the
    CPU of workers that have ended (read from wait4 by the parent): one server's figures."""

    def __init__(self, pids: Callable[[], list[int]], spent: Callable[[], float]) -> None:
        self.pids = pids
        self.spent = spent

    def collect(self) -> Iterator[Metric]:
        parent, *workers = self.pids()
        families = {family.name: family for family in _process(parent).collect() if family.samples}
        for pid in workers:  # one that has just ended gives nothing (its /proc is gone)
            for family in _process(pid).collect():
                ours = families.get(family.name)
                if family.name in SUMMED and ours is not None and family.samples:
                    first = ours.samples[0]
                    ours.samples[0] = first._replace(value=first.value + family.samples[0].value)
        cpu = families.get("process_cpu_seconds")
        if cpu is not None:
            cpu.samples[0] = cpu.samples[0]._replace(value=cpu.samples[0].value + self.spent())
        yield from families.values()


def _process(pid: int) -> ProcessCollector:
    return ProcessCollector(pid=lambda: pid, registry=None)


def parse_address(text: str, public: bool) -> tuple[str, int]:
    """``--metrics``: ``PORT`` (loopback), ``HOST:PORT`` or ``[V6]:PORT``, PORT 0 for any
    free one; the numeric address to bind and the port. ValueError, in words, for anything
    else, and for an address that is not loopback unless ``public``."""
    host, port = "127.0.0.1", text
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"--metrics {text}: expected [address]:port")
        port = rest[1:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"--metrics {text}: an IPv6 address goes in brackets: [::1]:port")
    if not (port.isascii() and port.isdigit() and int(port) < 65536):
        raise ValueError(f"--metrics {text}: the port must be a number from 0 to 65535")
    try:
        found = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as exc:
        words = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"--metrics {text}: no such address: {words}") from None
    address = str(found[0][4][0])
    if not public and not ipaddress.ip_address(address.partition("%")[0]).is_loopback:
        raise ValueError(
            f"--metrics {text}: {address} is not a loopback address, and anyone who can reach "
            "it reads the counts; add --metrics-public to mean it"
        )
    return address, int(port)

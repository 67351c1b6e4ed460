"""``qqfilter serve --metrics HOST:PORT``: Prometheus metrics over HTTP (docs/metrics.md).

The one module that imports prometheus_client, and only ``serve --metrics`` imports it: the
one-shot program, the thin client and a server without --metrics never load it. The server
hands a ``Metrics`` to its gate and its connections, and sets it as the pipeline's observer
(qqfilter.pipeline.OBSERVER), which times each check unit and reports the verdict in the
thread that decides the message.

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
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from qqfilter import __version__
from qqfilter.policy import ACCEPT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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
    """The server's metrics, in a registry of their own (with the process, platform and
    garbage collector metrics prometheus_client gives), and the HTTP server showing them."""

    def __init__(self, checks: list[str], *, limit: int, connections: int) -> None:
        disable_created_metrics()  # a *_created series beside every counter: noise here
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        registry.register(DnsCache())
        Info("qqfilter", "the qqfilter serving", registry=registry).info({"version": __version__})
        Gauge(
            "qqfilter_limit_messages", "--max: messages under the checks at once", registry=registry
        ).set(limit)
        Gauge(
            "qqfilter_limit_connections",
            "--connections: connections served at once",
            registry=registry,
        ).set(connections)
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
        )
        self.checking = Gauge(
            "qqfilter_messages_checking",
            "messages under the checks (holding one of --max turns)",
            registry=registry,
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
        )
        self._checks = {name: self.check_seconds.labels(name) for name in checks}
        for problem in PROBLEMS:
            self.problems.labels(problem)
        self.messages.labels(ACCEPT, "", "")
        self.codes.labels("0")
        self._seen: set[tuple[str, str, str]] = set()
        self._local = threading.local()

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

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the HTTP server on ``host`` and ``port`` (0: any free one), in a thread of
        its own; the address it listens on. OSError when it cannot."""
        httpd, _thread = start_http_server(port, host, registry=self.registry)
        address = httpd.server_address
        return str(address[0]), int(address[1])


class DnsCache(Collector):
    """The resolver's cache counts (qqfilter.shared.resolver.cache_statistics), read at a
    scrape: nothing is counted twice on the lookup path."""

    def collect(self) -> Iterator[Metric]:
        from qqfilter.shared import resolver

        hits, misses, too_big, kept = resolver.cache_statistics()
        yield CounterMetricFamily(
            "qqfilter_dns_cache_hits", "DNS answers taken from the cache", value=hits
        )
        yield CounterMetricFamily(
            "qqfilter_dns_cache_misses",
            "DNS questions the cache could not answer (not there, or expired)",
            value=misses,
        )
        yield CounterMetricFamily(
            "qqfilter_dns_cache_too_big",
            "DNS answers not kept: over the size the cache keeps",
            value=too_big,
        )
        yield GaugeMetricFamily(
            "qqfilter_dns_cache_entries", "DNS answers in the cache now", value=kept
        )


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

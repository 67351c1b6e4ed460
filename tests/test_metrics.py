"""``qqfilter serve --metrics``: Prometheus metrics, scraped over HTTP from a real server.

Messages go through the real client as qmail-smtpd sends them; the counters, gauges and
histograms are read back with prometheus_client's own parser. prometheus_client is loaded by
``serve --metrics`` only: the one-shot program, the client and a server without --metrics never
import it. A command line that cannot be carried out is one line and exit status 2.
"""

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import QQFILTER, ROOT, Resident, envelope
from prometheus_client.parser import text_string_to_metric_families

from qqfilter.resident import wire

ENV = envelope(b"alice@example.com", b"bob@example.org")
PLAIN = b"Subject: hi\n\nhello\n"


class Watched(Resident):
    """A ``qqfilter serve --metrics 127.0.0.1:0``; ``url`` is where its metrics are."""

    def __init__(self, directory, *args: str) -> None:
        super().__init__(directory, "--metrics", "127.0.0.1:0", *args)
        found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", self.log.read_text())
        assert found, self.log.read_text()
        self.url = found.group(1)

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        """Every sample: (name, its labels) -> value."""
        return scrape(self.url)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of the metrics page at ``url``: (name, its labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; 0 when there is none (not counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    running = Watched(tmp_path / "server")
    yield running
    running.stop()


def through(qq, server, message: bytes = PLAIN, **env: str):
    """Submit ``message`` through ``server``; a failure to reach it is 71."""
    settings = {"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail", **env}
    return qq.submit(message, ENV, env=settings)


def in_background(function) -> dict:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=function()))
    thread.start()
    result["thread"] = thread
    return result


def test_verdicts_codes_and_each_checks_time_are_counted(qq, server):
    before = server.scrape()
    assert value(before, "qqfilter_messages_total", verdict="accept", check="", tag="") == 0
    assert through(qq, server).returncode == 0
    refused = through(qq, server, QQF_MAXSIZE="5")
    assert refused.returncode == 31, refused.stderr
    broken = through(qq, server, QQF_MAXSIZE="lots")
    assert broken.returncode == 55, broken.stderr
    after = server.scrape()

    messages = "qqfilter_messages_total"
    assert value(after, messages, verdict="accept", check="", tag="") == 1
    size = {"check": "size", "tag": "Reject::DATA::Invalid_Size"}
    assert value(after, messages, verdict="reject", **size) == 1
    assert value(after, messages, verdict="error", check="", tag="") == 1
    for code, count in (("0", 1), ("31", 1), ("55", 1)):
        assert value(after, "qqfilter_exit_codes_total", code=code) == count, code

    # the size check ran for both messages that reached the pipeline, and took well under
    # 10 ms each time; the checks after it ran for the accepted one only (a refusal stops)
    assert value(after, "qqfilter_check_seconds_count", check="size") == 2
    assert value(after, "qqfilter_check_seconds_bucket", check="size", le="0.01") == 2
    assert value(after, "qqfilter_check_seconds_bucket", check="size", le="+Inf") == 2
    assert value(after, "qqfilter_check_seconds_count", check="recipients") == 1
    assert value(after, "qqfilter_check_seconds_sum", check="size") > 0

    assert value(after, "qqfilter_message_seconds_count") == 3
    assert value(after, "qqfilter_queue_wait_seconds_count") == 2  # spooled, then a turn
    assert value(after, "qqfilter_queue_timeouts_total") == 0
    assert value(after, "qqfilter_messages_in_flight") == 0
    assert value(after, "qqfilter_messages_checking") == 0
    assert value(after, "qqfilter_limit_messages") == 16
    # what prometheus_client gives for nothing: the process's own figures
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "process_open_fds") > 0
    assert "Traceback" not in server.log.read_text()


@pytest.fixture
def slow_scanner(tmp_path):
    """A QHPSI scanner that takes 2 seconds, then says clean."""
    program = tmp_path / "slow-scanner"
    program.write_text("#!/bin/sh\nsleep 2\nexit 0\n")
    program.chmod(0o755)
    return str(program)


def test_in_flight_and_queue_waits_while_a_message_is_under_the_checks(qq, tmp_path, slow_scanner):
    (tmp_path / "limited").mkdir()
    limited = Watched(tmp_path / "limited", "--max", "1", "--wait", "0.5")
    try:
        first = in_background(lambda: through(qq, limited, QHPSI=slow_scanner))
        time.sleep(0.7)
        during = limited.scrape()
        second = through(qq, limited)  # waits 0.5 s for the one turn, then 71
        first["thread"].join(10)
        after = limited.scrape()
    finally:
        limited.stop()
    assert value(during, "qqfilter_messages_in_flight") == 1
    assert value(during, "qqfilter_messages_checking") == 1
    assert second.returncode == 71
    assert first["out"].returncode == 0, first["out"].stderr
    assert value(after, "qqfilter_messages_in_flight") == 0
    assert value(after, "qqfilter_messages_checking") == 0
    assert value(after, "qqfilter_queue_timeouts_total") == 1
    assert value(after, "qqfilter_queue_wait_seconds_count") == 2
    assert value(after, "qqfilter_queue_wait_seconds_bucket", le="0.25") == 1  # the first
    assert value(after, "qqfilter_queue_wait_seconds_sum") >= 0.5  # the second's wait
    assert value(after, "qqfilter_messages_total", verdict="tempfail", check="", tag="") == 1
    assert value(after, "qqfilter_messages_total", verdict="error", check="", tag="") == 0
    assert value(after, "qqfilter_exit_codes_total", code="71") == 1
    # the QHPSI check took the scanner's 2 seconds
    assert value(after, "qqfilter_check_seconds_bucket", check="qhpsi", le="1.0") == 0
    assert value(after, "qqfilter_check_seconds_bucket", check="qhpsi", le="2.5") == 1


def test_connections_without_a_decision_are_counted(server):
    """A malformed request, and a connection that never asks (closed by the client)."""
    message_r, message_w = os.pipe()
    envelope_r, envelope_w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
            raw.settimeout(5)
            raw.connect(server.socket)
            raw.sendmsg([b"QQF1\0" + b"9" * 5000 + b"\0\0"], wire.rights((message_r, envelope_r)))
            assert raw.recv(65536).split(b"\0")[:3] == [b"QQF1", b"exit", b"71"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
            raw.connect(server.socket)
    finally:
        for fd in (message_r, message_w, envelope_r, envelope_w):
            os.close(fd)
    time.sleep(0.3)
    after = server.scrape()
    problems = "qqfilter_connection_problems_total"
    assert value(after, problems, problem="malformed") == 1
    assert value(after, problems, problem="closed_unasked") == 1
    assert value(after, problems, problem="not_allowed") == 0
    assert value(after, "qqfilter_messages_total", verdict="accept", check="", tag="") == 0


def test_dns_cache_hits_and_misses(qq, tmp_path, nsd_server):
    """SPF through a real nsd, twice: the second message's lookups come from the cache (one
    worker: each worker has a cache of its own)."""
    (tmp_path / "one").mkdir()
    server = Watched(tmp_path / "one", "--workers", "1")
    try:
        _dns_twice(qq, server, nsd_server)
    finally:
        server.stop()


def _dns_twice(qq, server, nsd_server) -> None:
    control = qq.tmp / "qmail" / "control"
    control.mkdir(parents=True)
    (control / "me").write_text("mx.example.org\n")
    message = (
        b"Received: from unknown (HELO mail.example.com) (192.0.2.1)\n"
        b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n" + PLAIN
    )
    spf = {"SPF": "1", "QQF_DNS": nsd_server.address, "TCPREMOTEIP": "192.0.2.1"}
    sender = envelope(b"alice@pass.spf.test", b"bob@example.org")
    settings = {"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail", **spf}
    first = qq.submit(message, sender, env=settings)
    assert first.returncode == 0, first.stderr
    once = server.scrape()
    second = qq.submit(message, sender, env=settings)
    assert second.returncode == 0, second.stderr
    twice = server.scrape()
    assert value(once, "qqfilter_dns_cache_misses_total") >= 1
    assert value(once, "qqfilter_dns_cache_entries") >= 1
    assert value(twice, "qqfilter_dns_cache_hits_total") > value(
        once, "qqfilter_dns_cache_hits_total"
    )
    assert value(twice, "qqfilter_dns_cache_misses_total") == value(
        once, "qqfilter_dns_cache_misses_total"
    )
    assert value(twice, "qqfilter_check_seconds_count", check="spf") == 2


def test_each_dns_question_is_one_hit_or_one_miss_and_sighup_keeps_the_counts(nsd_server):
    """An answer, then a cached one; an NXDOMAIN, then a cached one; an answer too big to
    keep, twice. SIGHUP (forget) drops the caches, never the counts."""
    from qqfilter.shared import resolver

    resolver.forget()
    hits, misses, too_big, kept = resolver.cache_statistics()
    assert kept == 0
    lookup = resolver.spf_lookup(resolver.make_resolver((nsd_server.address,)))
    for name in ("a.week.spf.test", "nothing-here.spf.test", "x.huge.spf.test"):
        for _ in range(2):
            lookup(name, "TXT", True, 5)
    now = resolver.cache_statistics()
    assert (now[0] - hits, now[1] - misses, now[2] - too_big, now[3]) == (2, 4, 2, 2)
    resolver.forget()
    assert resolver.cache_statistics() == (*now[:3], 0)


# prometheus_client is loaded by serve --metrics alone


def imported_by(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if "|" in line}


def test_the_queue_path_never_imports_prometheus_client(qq, server):
    """The one-shot program and the client, as the wrapper runs them (-IS), with
    -X importtime; the client talks to a server that has --metrics."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv = ['qqfilter']; "
        "from qqfilter.cli import main; sys.exit(main())"
    )
    command = [sys.executable, "-I", "-S", "-X", "importtime", "-c", code]
    for mode in ({}, {"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail"}):
        out = qq.submit(PLAIN, ENV, env=mode, command=command)
        assert out.returncode == 0, out.stderr
        imported = imported_by(out.stderr)
        assert "qqfilter.cli" in imported
        assert ("qqfilter.resident.client" in imported) == bool(mode)
        assert ("qqfilter.qmailqueue" in imported) != bool(mode)
        for name in imported:
            assert not name.startswith("prometheus_client"), (mode, name)
        assert "qqfilter.resident.metrics" not in imported


def test_a_server_without_metrics_never_imports_prometheus_client(tmp_path):
    command = [sys.executable, "-X", "importtime", "-m", "qqfilter", "serve"]
    for args, expected in (((), False), (("--metrics", "127.0.0.1:0"), True)):
        log = tmp_path / "serve.log"
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [*command, "--socket", str(tmp_path / "s.sock"), *args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=ROOT,
            )
            try:
                give_up = time.monotonic() + 30
                while "serving on" not in log.read_text():
                    assert process.poll() is None and time.monotonic() < give_up, log.read_text()
                    time.sleep(0.05)
            finally:
                process.terminate()
                process.wait(30)
        imported = imported_by(log.read_text())
        assert "qqfilter.resident.server" in imported
        assert ("prometheus_client" in imported) == expected, args
        assert ("qqfilter.resident.metrics" in imported) == expected, args


# a command line that cannot be carried out: one line, exit status 2


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [QQFILTER, "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
    )


def assert_one_line(out: subprocess.CompletedProcess, words: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert words in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("0.0.0.0:9187", "0.0.0.0 is not a loopback address"),
        ("[::]:9187", ":: is not a loopback address"),
        (":9187", "is not a loopback address"),
        ("127.0.0.1:99999", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
        ("::1:9187", "an IPv6 address goes in brackets"),
        ("[::1", "expected [address]:port"),
        ("no-such-host.invalid:9187", "no such address"),
    ],
)
def test_a_bad_metrics_address_is_one_line(tmp_path, address, words):
    out = serve("--socket", str(tmp_path / "s.sock"), "--metrics", address)
    assert_one_line(out, f"qqfilter serve: --metrics {address}: ")
    assert words in out.stderr
    assert not (tmp_path / "s.sock").exists()


def test_a_metrics_port_in_use_is_one_line_and_leaves_no_socket(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = serve("--socket", str(tmp_path / "s.sock"), "--metrics", f"127.0.0.1:{port}")
    assert_one_line(out, f"--metrics 127.0.0.1:{port}: Address already in use")
    assert not (tmp_path / "s.sock").exists()


def test_metrics_public_allows_any_address_and_needs_metrics(tmp_path):
    out = serve("--socket", str(tmp_path / "s.sock"), "--metrics-public")
    assert_one_line(out, "--metrics-public goes with --metrics HOST:PORT")
    (tmp_path / "public").mkdir()
    public = Resident(tmp_path / "public", "--metrics", "0.0.0.0:0", "--metrics-public")
    try:
        found = re.search(r"metrics on http://0\.0\.0\.0:(\d+)/", public.log.read_text())
        assert found, public.log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/metrics") as response:
            assert b"qqfilter_messages_total" in response.read()
    finally:
        public.stop()


def test_without_prometheus_client_metrics_is_one_line(tmp_path):
    """A host without the metrics extra: the package cannot be imported."""
    missing = tmp_path / "missing" / "prometheus_client"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text(
        "raise ImportError(\"No module named 'prometheus_client'\")\n"
    )
    out = serve(
        "--socket",
        str(tmp_path / "s.sock"),
        "--metrics",
        "127.0.0.1:0",
        env={"PYTHONPATH": str(tmp_path / "missing")},
    )
    assert_one_line(out, "--metrics needs the prometheus_client package")
    assert "pip install 'qqfilter[metrics]'" in out.stderr
    assert not (tmp_path / "s.sock").exists()

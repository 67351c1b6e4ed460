"""Benchmark: what a spam scan costs qqfilter per message, beside what the scanner itself takes.

    .venv/bin/python bench/spam.py

For each scanner in SCANNERS (spamd and rspamd), started as the tests
start it, and for a small message and one of 500 KB: per message, the wall time and CPU of
qqfilter with the scanner off, with it on, and the scanner's own time (the same request
sent straight from here, with nothing else around it), one-shot and resident. The client's
cost is qqfilter's time with the scan minus its time without it and minus the scanner's own,
the three measured back to back in each run (medians: a shared machine drifts). CPU is
qqfilter's alone (one-shot: the process; resident: the client and the whole server, from
/proc in clock ticks), which the scanner's work does not enter; it includes adding the header
fields, which copies the message.
"""

import socket
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import measure  # noqa: E402
from measure import World, timed  # noqa: E402
from rspamd import Rspamd  # noqa: E402 (the tests' helpers start the scanners)
from spamd import CLEAN_BODY, Spamd, message  # noqa: E402

ENVELOPE = b"Falice@example.com\0Tbob@example.org\0\0"
SMALL = message(CLEAN_BODY * 8)
LARGE = message(
    b"".join(
        b"Line %06d of a long report, in words that go on for a while.\n" % n for n in range(7900)
    )
)
RUNS = {"small": 40, "500 KB": 10}


class SpamdScanner:
    """Debian's spamd (tests/spamd.py) and a bare SPAMC/1.5 SYMBOLS request for its own time."""

    name = "spamd"

    def __init__(self) -> None:
        self.server = Spamd()
        self.env = {"QQF_SPAMD": self.server.unix}

    def direct(self, data: bytes) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(self.server.socket)
            sock.sendall(b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(data) + data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        if b" 0 EX_OK" not in answer:
            raise SystemExit(f"spamd answered {answer[:200]!r}")

    def stop(self) -> None:
        self.server.stop()


class RspamdScanner:
    """Debian's rspamd (tests/rspamd.py) and a bare POST /checkv2 for its own time."""

    name = "rspamd"

    def __init__(self) -> None:
        self.server = Rspamd()
        self.env = {"QQF_RSPAMD": self.server.url}

    def direct(self, data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", self.server.port)) as sock:
            head = (
                b"POST /checkv2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % len(data)
            )
            sock.sendall(head + data)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"rspamd answered {answer[:200]!r}")

    def stop(self) -> None:
        self.server.stop()


SCANNERS = [SpamdScanner, RspamdScanner]
"""Each: ``name``, started by its constructor; ``env`` turns it on; ``direct(message)`` is one
scan with nothing around it; ``stop()``."""


def submit(env: dict[str, str], data: bytes) -> None:
    """One message, which must be scanned and queued."""
    code, log = measure.submit(env, data, ENVELOPE)
    if code != 0 or b"unscanned" in log or b"skipped" in log:
        raise SystemExit(f"not scanned and queued ({code}): {log.decode()}")


def compare(scanner, env: dict[str, str], data: bytes, runs: int, server: int) -> dict:
    """Milliseconds per message: qqfilter off and on (wall, CPU), the scanner's own time, and
    the client's wall cost (on - off - own), each run measured back to back so that the
    machine's drift cancels; medians of wall times, means of CPU."""
    on_env = {**env, **scanner.env}
    submit(env, data)  # warm
    submit(on_env, data)
    keys = ("off", "on", "own", "client", "cpu off", "cpu on")
    rows: dict[str, list[float]] = {key: [] for key in keys}
    for _ in range(runs):
        own = timed(lambda: scanner.direct(data), 0)[0]
        off, cpu_off = timed(lambda: submit(env, data), server)
        on, cpu_on = timed(lambda: submit(on_env, data), server)
        for key, value in zip(keys, (off, on, own, on - off - own, cpu_off, cpu_on), strict=True):
            rows[key].append(value * 1000)
    figures = {key: statistics.median(values) for key, values in rows.items()}
    figures["cpu off"] = statistics.fmean(rows["cpu off"])
    figures["cpu on"] = statistics.fmean(rows["cpu on"])
    return figures


def main() -> None:
    with World("spam") as world:
        world.serve()
        print(
            f"{'scanner':8} {'message':8} {'mode':9} {'off ms':>7} {'on ms':>7} "
            f"{'own ms':>7} {'client ms':>9} {'CPU off':>8} {'CPU on':>7} {'CPU +':>6}"
        )
        for make in SCANNERS:
            scanner = make()
            try:
                for label, data in (("small", SMALL), ("500 KB", LARGE)):
                    for mode, (env, server) in world.modes.items():
                        f = compare(scanner, env, data, RUNS[label], server)
                        print(
                            f"{scanner.name:8} {label:8} {mode:9} {f['off']:7.1f} {f['on']:7.1f} "
                            f"{f['own']:7.1f} {f['client']:9.1f} {f['cpu off']:8.1f} "
                            f"{f['cpu on']:7.1f} {f['cpu on'] - f['cpu off']:6.1f}"
                        )
            finally:
                scanner.stop()
        print(f"sizes: small {len(SMALL)} bytes, large {len(LARGE)} bytes; runs {RUNS}")


if __name__ == "__main__":
    main()

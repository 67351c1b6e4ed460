"""Benchmark: sustained throughput of ``qqfilter serve`` with 1 worker and with 2, and the
server's memory over many messages.

    .venv/bin/python bench/workers.py [--client PROGRAM] [--senders 4] [--messages 2000]
                                      [--rounds 3] [--rss-messages 10000] [--no-clamd]

Every check that needs no network is on: attachments (the default lists, archives opened),
recipient validation against a scratch copy of the test qmail home, the size limit, and
virus scanning with a local clamd started as the tests start it (tests/clamav.py; skipped,
and said so, when there is none). SPF and the DNS checks are off: they wait on the network.
qmail-queue is a stand-in shell script that reads the message.

``--client`` is the QMAILQUEUE program run for each message (as qmail-smtpd runs it: the
message on fd 0, the envelope on fd 1): by default the Python wrapper ``qqfilter
install-wrapper`` writes; any other client of the resident server (a compiled one) can be
given by its path. Each message is one run of it, ``--senders`` at a time.

Printed, from one run:

- for each kind of message (a small plain one; one with a zip, a PDF and a text attachment),
  ``--rounds`` rounds of ``--messages`` messages each with 1 worker then 2 (interleaved: a
  shared machine drifts): messages per second; CPU per message of the clients (with the
  stand-in), of the server (parent and workers, from /proc, in clock ticks) and of clamd; the
  cores the server kept busy (one worker cannot pass one by much: the GIL); the medians'
  ratio, 2 workers over 1 (target on 2 cores: 1.8 or more), and the ceiling the machine sets:
  all its CPUs divided by the CPU a message costs everything (this harness starting the
  clients, the clients, the server, clamd), since here they all run on the same cores.
- the server with 2 workers: RSS of each process and their sum, before and after
  ``--rss-messages`` messages (target: growth under 5 MB).
"""

import argparse
import contextlib
import io
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clamav import Clamd  # noqa: E402 (the tests' helper starts clamd)

QQFILTER = str(Path(sys.executable).with_name("qqfilter"))
ENVELOPE = b"Falice@example.com\0Tjoe@example.org\0\0"
HEAD = (
    b"Received: from unknown (HELO mail.example.com) (192.0.2.1)\n"
    b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
    b"From: alice@example.com\nTo: joe@example.org\nSubject: the figures\n"
)
PLAIN = HEAD + b"\n" + b"A few lines of an ordinary message.\n" * 30


def attached() -> bytes:
    """A message as offices send them: a text part, a zip of three files, a small PDF."""
    import base64

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as packed:
        for n in range(3):
            packed.writestr(f"report-{n}.txt", f"Quarter {n}: figures as agreed.\n" * 200)
    pdf = (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
        + b"% a line of padding to give the reader something to walk\n" * 60
        + b"trailer << /Root 1 0 R >>\n%%EOF\n"
    )
    parts = []
    for name, kind, data in (
        ("reports.zip", "application/zip", archive.getvalue()),
        ("summary.pdf", "application/pdf", pdf),
        ("notes.txt", "text/plain", b"Notes from the meeting.\n" * 40),
    ):
        parts.append(
            b"--b\nContent-Type: " + kind.encode() + b'; name="' + name.encode() + b'"\n'
            b'Content-Disposition: attachment; filename="' + name.encode() + b'"\n'
            b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data)
        )
    return (
        HEAD + b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
        b"--b\nContent-Type: text/plain\n\nThe figures are attached.\n"
        + b"".join(parts)
        + b"--b--\n"
    )


def submit(command: list[str], env: dict[str, str], message: bytes) -> int:
    """One message as qmail-smtpd hands it over: pipes on fd 0 and fd 1."""
    envelope_read, envelope_write = os.pipe()
    os.write(envelope_write, ENVELOPE)
    os.close(envelope_write)
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=envelope_read, stderr=subprocess.DEVNULL, env=env
    )
    os.close(envelope_read)
    process.communicate(message)
    return process.returncode


def sustained(
    command: list[str], env: dict[str, str], message: bytes, total: int, senders: int
) -> float:
    """Seconds for ``total`` messages from ``senders`` concurrent senders."""
    failed = []

    def sender(count: int) -> None:
        for _ in range(count):
            code = submit(command, env, message)
            if code != 0:
                failed.append(code)

    threads = [threading.Thread(target=sender, args=(total // senders,)) for _ in range(senders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - started
    if failed:
        raise SystemExit(f"{len(failed)} messages were not queued (exit codes {set(failed)})")
    return took


class Server:
    """``qqfilter serve --workers N`` on a socket in ``scratch``, started and waited for."""

    def __init__(self, scratch: Path, workers: int) -> None:
        self.socket = str(scratch / "qqfilter.sock")
        self.log = scratch / f"serve-{workers}.log"
        self.process = subprocess.Popen(
            [QQFILTER, "serve", "--socket", self.socket, "--workers", str(workers)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 (the process keeps it)
            env={"PATH": "/usr/bin:/bin"},
        )
        give_up = time.monotonic() + 30
        while "serving on" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > give_up:
                raise SystemExit(f"qqfilter serve did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def pids(self) -> list[int]:
        """The server's process, then its workers (none with one worker: it is the server)."""
        found = [self.process.pid]
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    found.append(int(entry))
        return found

    def cpu(self) -> float:
        """CPU seconds (user+sys) of the server's processes, from /proc (clock ticks)."""
        ticks = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss(self) -> list[int]:
        """VmRSS of each process, KiB."""
        sizes = []
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]))
        return sizes

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    """This harness's CPU: its threads start every client (fork, exec, pipes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds (user+sys) of a live process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    scratch: Path,
    workers: int,
    command: list[str],
    env: dict[str, str],
    message: bytes,
    options: argparse.Namespace,
    scanner: int,
) -> tuple[float, float, float, float, float]:
    """(messages per second, and CPU ms per message of the clients, the server, clamd (whose
    pid is ``scanner``: 0 for none) and this harness)."""
    server = Server(scratch, workers)
    try:
        resident = {**env, "QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail"}
        sustained(command, resident, message, 40, options.senders)  # warm: caches, clamd
        clients, served, harness = children_cpu(), server.cpu(), own_cpu()
        scanned = process_cpu(scanner) if scanner else 0.0
        took = sustained(command, resident, message, options.messages, options.senders)
        clients, served = children_cpu() - clients, server.cpu() - served
        harness = own_cpu() - harness
        scanned = process_cpu(scanner) - scanned if scanner else 0.0
    finally:
        server.stop()
    each = 1000 / options.messages
    rate = options.messages / took
    return rate, clients * each, served * each, scanned * each, harness * each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", help="the QMAILQUEUE program (default: the Python wrapper)")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--messages", type=int, default=2000, help="per round and setting")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-messages", type=int, default=10000)
    parser.add_argument("--no-clamd", action="store_true", help="no virus scanning")
    options = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="qqf-bench-workers-"))
    clamd = None
    try:
        home = scratch / "qmail"
        shutil.copytree(ROOT / "fixtures" / "qmailhome", home, copy_function=shutil.copyfile)
        assign = home / "users" / "assign"
        assign.write_text(assign.read_text().replace("@HOME@", str(home)))
        if options.client:
            command = [options.client]
        else:
            wrapper = scratch / "qqfilter"
            me = pwd.getpwuid(os.getuid()).pw_name
            subprocess.run(
                [QQFILTER, "install-wrapper", "--user", me, str(wrapper)],
                check=True,
                capture_output=True,
            )
            command = [str(wrapper)]
        queue = scratch / "qmail-queue"
        queue.write_text("#!/bin/sh\nexec cat >/dev/null\n")
        queue.chmod(0o755)
        spool = scratch / "spool"
        spool.mkdir()
        env = {
            "PATH": "/usr/bin:/bin",
            "QQF_CONFIG": "/dev/null",
            "QQF_QMAILHOME": str(home),
            "QQF_QMAILQUEUE": str(queue),
            "QQF_SPOOLDIR": str(spool),
            "QQF_RCPTCHECK": "any",
            "QQF_MAXSIZE": "10000000",
            "TCPREMOTEIP": "192.0.2.1",
        }
        checks = "attachments, recipients, size"
        if not options.no_clamd:
            try:
                clamd = Clamd()
            except RuntimeError as exc:
                print(f"no clamd ({exc}): virus scanning off")
            else:
                env["QQF_CLAMD"] = clamd.unix
                checks += ", clamd"
        cpus = len(os.sched_getaffinity(0))
        print(
            f"{cpus} CPUs; client {command[0]}; {options.senders} senders; checks: {checks}; "
            f"{options.messages} messages a round"
        )
        for kind, message in (("small plain", PLAIN), ("3 attachments", attached())):
            if submit(command, env, message) != 0:
                raise SystemExit(f"the {kind} message was not queued in-process")
            scanner = clamd.process.pid if clamd is not None else 0
            figures: dict[int, list[tuple[float, float, float, float, float]]] = {1: [], 2: []}
            for _ in range(options.rounds):
                for workers in (1, 2):
                    figures[workers].append(
                        measure(scratch, workers, command, env, message, options, scanner)
                    )
            print(f"{kind} message ({len(message):,} bytes):")
            costs = []
            for workers, rows in figures.items():
                rates = ", ".join(f"{row[0]:6.1f}" for row in rows)
                client, server, scan, harness = (
                    statistics.median(r[i] for r in rows) for i in (1, 2, 3, 4)
                )
                busy = statistics.median(row[0] * row[2] / 1000 for row in rows)
                costs.append(client + server + scan + harness)
                print(
                    f"  {workers} worker{'s' if workers > 1 else ' '}: messages/s {rates}; "
                    f"CPU ms a message: clients {client:4.1f}, server {server:4.1f}, "
                    f"clamd {scan:3.1f}, harness {harness:3.1f}; server cores busy {busy:4.2f}"
                )
            one = statistics.median(row[0] for row in figures[1])
            two = statistics.median(row[0] for row in figures[2])
            ceiling = cpus * 1000 / statistics.mean(costs)
            print(
                f"  medians {one:.1f} and {two:.1f} messages/s: 2 workers / 1 = {two / one:.2f}; "
                f"the machine's ceiling {ceiling:.0f} messages/s ({ceiling / one:.2f}x 1 worker)"
            )

        server = Server(scratch, 2)
        try:
            resident = {**env, "QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail"}
            message = attached()
            sustained(command, resident, message, 200, options.senders)
            before = server.rss()
            took = sustained(command, resident, message, options.rss_messages, options.senders)
            after = server.rss()
        finally:
            server.stop()
        print(
            f"server with 2 workers, {options.rss_messages:,} messages with attachments "
            f"({options.rss_messages / took:.1f} messages/s), RSS parent + workers:"
        )
        print(
            "  before "
            + " + ".join(f"{kib / 1024:.1f}" for kib in before)
            + f" = {sum(before) / 1024:.1f} MB; after "
            + " + ".join(f"{kib / 1024:.1f}" for kib in after)
            + f" = {sum(after) / 1024:.1f} MB; growth {(sum(after) - sum(before)) / 1024:+.1f} MB"
            " (target under 5 MB)"
        )
    finally:
        if clamd is not None:
            clamd.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

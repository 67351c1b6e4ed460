"""Benchmark: qqfilter against simscan and against no filter, end to end through real qmail.

    .venv/bin/python bench/realqmail.py [--quick] [--only NAME[,NAME...]] [--messages N]
                                        [--rounds N] [--repeats R] [--workers N]

Every message goes the whole way: an SMTP session (one message per session, the client side
timed here) with notqmail's real qmail-smtpd, which runs QMAILQUEUE, which ends in notqmail's
real qmail-queue writing into a real queue. notqmail comes from tests/realqmail.py (built once
from ../shared/vendor, cached), simscan from bench/simscan.py (likewise, against that qmail:
clamdscan + ripmime + attachments by extension). Both filters ask the same clamd (the tests'
Clamd, with the project's small signature database); qqfilter also checks attachments,
recipients (QQF_RCPTCHECK=any, against a copy of fixtures/qmailhome) and SPF at level 3
through a local nsd serving the tests' zones (the tests' Nsd). qqfilter is installed as
install.sh installs it, into a scratch venv and qmail home; the resident server is started
from that venv.

Configurations (``--only`` takes these names, and the section names):

    none         QMAILQUEUE unset: qmail-smtpd runs qmail-queue itself
    simscan      QMAILQUEUE=simscan
    oneshot      qqfilter without a server: every message starts Python with every check
    resident-py  qqfilter serve, with the Python client (install.sh's wrapper)
    resident-c   qqfilter serve, with the compiled client (when one was built; else skipped,
                 saying why)

Sections (each configuration's messages are then read back from the queue: every one must be
there exactly once, three files each, nothing half-made; then the queue is emptied):

    small      a ~1.5 KB message, the configurations interleaved round-robin (so the machine's
               noise falls on all alike): median and 90th percentile ms per message, CPU per
               message, ratios to no filter and to simscan, the issue's targets (PASS/MISS)
    large      a 10 MB base64 attachment: no filter, simscan and resident qqfilter (compiled
               client if there is one), interleaved: seconds per message
    sustained  N messages (2,000) per configuration from 4 concurrent senders, each a process
               running SMTP sessions one after another: messages per second, CPU per message
               (--repeats R: R runs, the order reversed each time, the median shown)

CPU per message is the SMTP session's process tree (qmail-smtpd, the filter and all it waits
for: qmail-queue, ripmime, clamdscan; the clients' rusage) plus the services' (the resident
server with its worker processes, clamd), read from /proc.

The shape: one process holds the qmail home (realqmail.exclusive) for the whole run, so no
test run empties the queue under it; services are started once and shared by the
configurations; sessions run qmail-smtpd as root on a socket pair (realqmail.smtp_session),
where a real MX runs it as qmaild under tcpserver (both filters run as they would there:
simscan setuid simscan, qmail-queue setuid qmailq).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # first: this file's own name must not shadow it
sys.path.insert(1, str(ROOT / "bench"))

import realqmail  # noqa: E402 (tests/realqmail.py: notqmail built, SMTP sessions, the queue)
import simscan  # noqa: E402 (bench/simscan.py)
from clamav import Clamd  # noqa: E402 (the tests' helpers start the services)
from nameserver import Nsd  # noqa: E402

SECTIONS = ("small", "large", "sustained")
CONFIGS = ("none", "simscan", "oneshot", "resident-py", "resident-c")
LABELS = {
    "none": "no filter",
    "simscan": "simscan",
    "oneshot": "qqfilter one-shot",
    "resident-py": "qqfilter resident, Python client",
    "resident-c": "qqfilter resident, compiled client",
}
SENDER = b"alice@pass.spf.test"  # SPF pass for 192.0.2.1 in fixtures/zones/spf.test.zone
RECIPIENT = b"joe@example.org"  # a mailbox of fixtures/qmailhome (users/assign)
HELO = b"mail.spf.test"
CLIENT_IP = "192.0.2.1"
TICK = os.sysconf("SC_CLK_TCK")


def message(config: str, seq: int, body: bytes = b"") -> bytes:
    """A message that says which configuration sent it, and its number."""
    return (
        b"From: Alice <alice@pass.spf.test>\nTo: Joe <joe@example.org>\n"
        b"Subject: lunch on Thursday\nDate: Thu, 26 Nov 2026 10:00:00 +0000\n"
        b"Message-ID: <%d.%s@pass.spf.test>\nX-Bench: %s %d\n"
        % (seq, config.encode(), config.encode(), seq)
        + (body or b"\n" + b"A few lines of an ordinary message, as people write them.\n" * 24)
    )


def large_body(size_mb: int) -> bytes:
    """A multipart body with one base64 attachment of ``size_mb`` MB of random data."""
    data = base64.encodebytes(os.urandom(size_mb << 20))
    return (
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"\n\n'
        b"--b1\nContent-Type: text/plain\n\nThe figures are attached.\n"
        b'--b1\nContent-Type: application/octet-stream; name="figures.bin"\n'
        b'Content-Disposition: attachment; filename="figures.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n" + data + b"--b1--\n"
    )


# --- the machine and the services -----------------------------------------------------------


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0))
    return (
        f"machine: {os.cpu_count()} CPUs ({usable} usable), {model}; Linux "
        f"{platform.release()}; Python {platform.python_version()}; load average "
        + " ".join(f"{load:.2f}" for load in os.getloadavg())
    )


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the server's workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


class Bench:
    """The services, the installation and each configuration's QMAILQUEUE and environment."""

    def __init__(self, scratch: Path, log: Callable[[str], None], workers: int | None) -> None:
        self.scratch = scratch
        self.workers = workers
        self.log = log
        self.clamd: Clamd | None = None
        self.nsd: Nsd | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.server_pids: list[int] = []
        self.server_shape = "not started"
        self.skipped: dict[str, str] = {}
        self.configs: dict[str, tuple[str | None, dict[str, str]]] = {}

    def start(self, wanted: list[str]) -> None:
        started = time.monotonic()
        self.home = realqmail.qmail_home()
        self.log(
            f"qmail: notqmail from {realqmail.tarball().name} in {self.home} "
            f"(built in {realqmail.build_seconds(self.home):.1f} s; "
            f"ready here in {time.monotonic() - started:.1f} s)"
        )
        started = time.monotonic()
        self.simscan = simscan.build(self.home)
        self.log(
            f"simscan: from {simscan.tarball().name} in {self.simscan.home} (built in "
            f"{simscan.build_seconds(self.simscan):.1f} s; ready here in "
            f"{time.monotonic() - started:.1f} s)"
        )
        self.clamd = Clamd()
        os.chmod(self.clamd.dir, 0o711)  # clamdscan runs as simscan: it must reach the socket
        self.simscan.use(self.clamd.socket)
        self.nsd = Nsd()
        self.install()
        base = {
            "TCPREMOTEIP": CLIENT_IP,
            "TCPLOCALIP": "127.0.0.1",
            "TCPLOCALHOST": "mx.example.org",
        }
        qqfilter = {
            **base,
            "QQF_CONFIG": "/dev/null",
            "QQF_QMAILHOME": str(self.qqhome),
            "QQF_QMAILQUEUE": str(self.home / "bin" / "qmail-queue"),
            "QQF_SPOOLDIR": str(self.spool),
            "QQF_CLAMD": self.clamd.unix,
            "QQF_DNS": self.nsd.address,
            "SPF": "3",
            "QQF_RCPTCHECK": "any",
        }
        resident = {**qqfilter, "QQF_SOCKET": self.socket, "QQF_SOCKETFALLBACK": "tempfail"}
        wrapper = str(self.qqhome / "bin" / "qqfilter")
        with open(wrapper, "rb") as script:
            if script.read(2) != b"#!":  # the Python client's row must be Python's
                raise SystemExit(f"{wrapper} is not the Python wrapper install-wrapper writes")
        self.configs = {
            "none": (None, base),
            "simscan": (str(self.simscan.program), base),
            "oneshot": (wrapper, qqfilter),
            "resident-py": (wrapper, resident),
        }
        compiled, why = self.compiled_client()
        if compiled:
            self.configs["resident-c"] = (compiled, resident)
        else:
            self.log(f"qqfilter: no compiled client: {why}")
            self.skipped["resident-c"] = "no compiled client (see above)"
        if any(c.startswith("resident") for c in wanted):
            self.start_server()

    def install(self) -> None:
        """qqfilter as install.sh installs it: a venv and the wrapper in a qmail home, this
        one a copy of fixtures/qmailhome (the mailboxes QQF_RCPTCHECK knows)."""
        started = time.monotonic()
        self.scratch.chmod(0o755)
        self.qqhome = self.scratch / "qqfilter-home"
        shutil.copytree(ROOT / "fixtures" / "qmailhome", self.qqhome, copy_function=shutil.copyfile)
        assign = self.qqhome / "users" / "assign"
        assign.write_text(assign.read_text().replace("@HOME@", str(self.qqhome)))
        (self.qqhome / "bin").mkdir()
        self.venv = self.scratch / "venv"
        done = subprocess.run(
            [
                str(ROOT / "install.sh"),
                *("--qmail", "--qmailhome", str(self.qqhome), "--venv", str(self.venv)),
                *("--user", "root"),  # qmail-smtpd runs as root here (realqmail.smtp_session)
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"install.sh failed:\n{done.stdout}{done.stderr}")
        self.install_output = done.stdout + done.stderr
        self.spool = self.scratch / "spool"
        self.spool.mkdir()
        self.socket = str(self.scratch / "qqfilter.sock")
        self.log(f"qqfilter: install.sh into a scratch venv in {time.monotonic() - started:.1f} s")

    def compiled_client(self) -> tuple[str | None, str]:
        """The compiled thin client: the one install.sh built (bin/qqfilter-queue), else one
        built now by ``qqfilter install-client`` of the installation (else of the project's
        own .venv: a wheel may not carry client.c yet); (path, "") or (None, why not)."""
        program = self.qqhome / "bin" / "qqfilter-queue"
        if program.exists():
            self.log(f"qqfilter: compiled client {program} (install.sh built it)")
            return str(program), ""
        wrapper = str(self.qqhome / "bin" / "qqfilter")
        said = []
        for venv in (self.venv, ROOT / ".venv"):
            command = [str(venv / "bin" / "qqfilter"), "install-client", str(program)]
            done = subprocess.run(
                [*command, "--wrapper", wrapper, "--user", "root"], capture_output=True, text=True
            )
            if done.returncode == 0 and program.exists():
                self.log(f"qqfilter: compiled client built by {venv}/bin/qqfilter install-client")
                return str(program), ""
            lines = (done.stderr or done.stdout).strip().splitlines()
            said.append(f"{venv}: {lines[-1] if lines else done.returncode}")
        return None, "qqfilter install-client failed: " + "; ".join(said)

    def start_server(self) -> None:
        self.server_log = open(self.scratch / "server.log", "wb")  # noqa: SIM115 (until stop)
        self.server = subprocess.Popen(
            [
                *(str(self.venv / "bin" / "qqfilter"), "serve", "--socket", self.socket),
                *(["--workers", str(self.workers)] if self.workers else []),
            ],
            stderr=self.server_log,
            env={"PATH": "/usr/bin:/bin"},
        )
        give_up = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.server.poll() is not None or time.monotonic() > give_up:
                raise SystemExit("qqfilter serve did not start: " + self.server_tail())
            time.sleep(0.02)
        time.sleep(0.5)  # workers, if any, to be forked
        self.server_pids = descendants(self.server.pid)
        workers = len(self.server_pids) - 1
        self.server_shape = f"{workers} worker processes" if workers else "one process"

    def server_tail(self) -> str:
        return (self.scratch / "server.log").read_text(errors="replace")[-2000:]

    def service_pids(self) -> list[int]:
        assert self.clamd is not None
        return [*self.server_pids, self.clamd.process.pid]

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait()
            self.server_log.close()
        for service in (self.clamd, self.nsd):
            if service is not None:
                service.stop()


# --- one session --------------------------------------------------------------------------


def session(
    home: Path, qmailqueue: str | None, env: dict[str, str], data: bytes
) -> tuple[float, float, str, bytes]:
    """One SMTP session: (wall seconds, CPU seconds of qmail-smtpd and all it waited for,
    the reply to the message, qmail-smtpd's stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = realqmail.smtp_session(
        home, env, data, SENDER, [RECIPIENT], qmailqueue, helo=HELO, timeout=300
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    try:
        reply = result.reply
    except KeyError:
        reply = f"no reply (qmail-smtpd exited {result.returncode})"
    return wall, cpu, reply, result.stderr


def log_times(stderr: bytes) -> tuple[int, int] | None:
    """``ms`` and ``checkms`` of qqfilter's log line in qmail-smtpd's stderr, if there."""
    for line in stderr.splitlines():
        if line.startswith(b"qqfilter:"):
            fields = dict(w.split(b"=", 1) for w in line.split() if b"=" in w)
            if b"ms" in fields and b"checkms" in fields:
                return int(fields[b"ms"]), int(fields[b"checkms"])
    return None


def check_queue(home: Path, expected: dict[str, int]) -> str:
    """Every message of each configuration, numbered 0..expected[config]-1, in the queue
    exactly once, and nothing half-written; the queue is emptied after. The words say what
    is wrong, or ""."""
    counts: dict[tuple[bytes, int], int] = {}
    others = 0
    for queued in realqmail.queued(home):
        at = queued.message.find(b"\nX-Bench: ")
        if at < 0:
            others += 1
            continue
        config, seq = queued.message[at + 10 : queued.message.index(b"\n", at + 1)].split()
        key = (config, int(seq))
        counts[key] = counts.get(key, 0) + 1
    half = list((home / "queue" / "pid").iterdir())
    files = len(realqmail.queue_files(home))  # mess/, intd/ and todo/: 3 a message
    realqmail.empty_queue(home)
    wanted = {(c.encode(), n) for c, count in expected.items() for n in range(count)}
    problems = []
    missing = sorted(wanted - counts.keys())
    twice = [key for key, count in counts.items() if count > 1]
    strays = len(counts.keys() - wanted) + others
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if twice:
        problems.append(f"{len(twice)} queued more than once")
    if strays:
        problems.append(f"{strays} messages of other runs")
    if half:
        problems.append(f"{len(half)} half-made in queue/pid")
    if files != 3 * len(wanted):
        problems.append(f"{files} files in the queue, not 3 for each of {len(wanted)} messages")
    return "; ".join(problems)


# --- the sections -------------------------------------------------------------------------


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:6.2f}x" if value and base else f"{'-':>7}"


def target(words: str, ok: bool | None) -> str:
    return f"  target: {words}: " + ("n/a" if ok is None else "PASS" if ok else "MISS")


def small(bench: Bench, configs: list[str], rounds: int) -> dict[str, float]:
    print(
        f"\nsmall message ({len(message('none', 0))} bytes), one per SMTP session, "
        f"{rounds} rounds, configurations interleaved:"
    )
    walls: dict[str, list[float]] = {c: [] for c in configs}
    cpus: dict[str, float] = dict.fromkeys(configs, 0.0)
    services: dict[str, float] = dict.fromkeys(configs, 0.0)
    logged: dict[str, list[tuple[int, int]]] = {c: [] for c in configs}
    sent = 0
    for warm in configs:  # each path once: caches, the server's first DNS answers
        qmailqueue, env = bench.configs[warm]
        session(bench.home, qmailqueue, env, message("warm", 0))
    realqmail.empty_queue(bench.home)
    own = resource.getrusage(resource.RUSAGE_SELF)
    for round_ in range(rounds):
        shift = round_ % len(configs)  # no configuration always first after the bench's work
        for config in configs[shift:] + configs[:shift]:
            qmailqueue, env = bench.configs[config]
            service_before = cpu_seconds(bench.service_pids())
            wall, cpu, reply, stderr = session(bench.home, qmailqueue, env, message(config, round_))
            services[config] += cpu_seconds(bench.service_pids()) - service_before
            if not reply.startswith("250"):
                raise SystemExit(f"{config}: {reply}\n{stderr.decode(errors='replace')}")
            walls[config].append(wall * 1000)
            cpus[config] += cpu * 1000
            times = log_times(stderr)
            if times:
                logged[config].append(times)
            sent += 1
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (own_after.ru_utime + own_after.ru_stime - own.ru_utime - own.ru_stime) / sent
    problem = check_queue(bench.home, dict.fromkeys(configs, rounds))
    if problem:
        raise SystemExit(f"the queue is wrong: {problem}")
    medians = {c: statistics.median(walls[c]) for c in configs}
    none, sims = medians.get("none"), medians.get("simscan")
    print(
        f"  {'':36} {'median ms':>9} {'p90 ms':>7} {'CPU ms':>7} {'(services)':>10}"
        f" {'x none':>7} {'x simscan':>9} {'log ms/checkms':>14}"
    )
    for config in configs:
        p90 = statistics.quantiles(walls[config], n=10)[-1] if rounds > 1 else walls[config][0]
        cpu = (cpus[config] + services[config] * 1000) / rounds
        lines = logged[config]
        said = "-"
        if lines:
            whole, checks = (statistics.mean(t[i] for t in lines) for i in (0, 1))
            said = f"{whole:.1f}/{checks:.1f}"
        print(
            f"  {LABELS[config]:<36} {medians[config]:9.1f} {p90:7.1f} {cpu:7.1f} "
            f"{services[config] * 1000 / rounds:10.1f} {ratio(medians[config], none)}"
            f" {ratio(medians[config], sims):>9} {said:>14}"
        )
    for config, why in bench.skipped.items():
        print(f"  {LABELS[config]:<36} skipped: {why}")
    print(f"  ({sent} messages, each in the queue exactly once; CPU: the session's processes")
    print("   and the services (server, clamd; 10 ms ticks, averaged); log ms/checkms: the mean")
    print("   of qqfilter's log line's ms, its whole time, and checkms, the checks' own;")
    print(f"   the SMTP client, this Python, costs {client_cpu * 1000:.1f} ms CPU a session)")
    best = medians.get("resident-c")
    for base, factor, name in ((none, 2.0, "no filter"), (sims, 0.5, "simscan")):
        measured = f" ({best / base:.3f}x)" if best and base else ""
        print(
            target(
                f"compiled client + resident <= {factor:g}x {name}{measured}",
                _le(best, base, factor),
            )
        )
    if "none" in configs:
        for config in ("resident-c", "resident-py"):
            if config in configs:  # the client's process: the session's CPU over no filter's
                extra = (cpus[config] - cpus["none"]) / rounds
                print(
                    target(
                        f"CPU in the client process <= 2 ms ({LABELS[config]}: {extra:.1f} ms, "
                        "its session's CPU over no filter's)",
                        extra <= 2.0,
                    )
                )
    if best is None and "resident-py" in medians:
        py = medians["resident-py"]
        print(
            f"  (Python client instead: {ratio(py, none).strip()} no filter, "
            f"{ratio(py, sims).strip()} simscan)"
        )
    return medians


def _le(value: float | None, base: float | None, factor: float) -> bool | None:
    if value is None or base is None:
        return None
    return value <= base * factor


def large(bench: Bench, configs: list[str], runs: int, size_mb: int) -> None:
    body = large_body(size_mb)
    data_size = len(message("none", 0, body))
    print(
        f"\nlarge message: one {size_mb} MB attachment (base64; {data_size / 1e6:.1f} MB "
        f"message), {runs} runs each, interleaved:"
    )
    took: dict[str, list[float]] = {c: [] for c in configs}
    for run in range(runs):
        for config in configs if run % 2 == 0 else configs[::-1]:
            qmailqueue, env = bench.configs[config]
            wall, _, reply, stderr = session(
                bench.home, qmailqueue, env, message(config, run, body)
            )
            if not reply.startswith("250"):
                raise SystemExit(f"{config}: {reply}\n{stderr.decode(errors='replace')}")
            took[config].append(wall)
    problem = check_queue(bench.home, dict.fromkeys(configs, runs))
    if problem:
        raise SystemExit(f"the queue is wrong: {problem}")
    medians = {c: statistics.median(took[c]) for c in configs}
    for config in configs:
        print(
            f"  {LABELS[config]:<36} {medians[config]:6.3f} s"
            f"  (min {min(took[config]):.3f}, max {max(took[config]):.3f})"
        )
    ours = [c for c in ("resident-c", "resident-py") if c in medians]
    if ours and "simscan" in medians:
        print(
            target(
                f"{LABELS[ours[0]]} faster than simscan "
                f"({medians[ours[0]] / medians['simscan']:.2f}x)",
                medians[ours[0]] < medians["simscan"],
            )
        )


def _sender(
    home: str, qmailqueue: str | None, env: dict[str, str], config: str, numbers: range
) -> tuple[list[str], float, float]:
    """One sender process: its sessions one after another; (failures, CPU of its sessions'
    processes, its own CPU as the SMTP client)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    failures = []
    for seq in numbers:
        _, _, reply, stderr = session(Path(home), qmailqueue, env, message(config, seq))
        if not reply.startswith("250"):
            failures.append(f"{seq}: {reply} {stderr[-300:].decode(errors='replace')}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    return (
        failures,
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        own_after.ru_utime + own_after.ru_stime - own.ru_utime - own.ru_stime,
    )


def _pid(_: int) -> int:
    return os.getpid()


def sustained(bench: Bench, configs: list[str], total: int, senders: int, repeats: int) -> None:
    print(
        f"\nsustained: {total:,} small messages per configuration from {senders} concurrent "
        "senders\n(processes), one SMTP session each; the queue checked and emptied after each"
        + (f"; {repeats} repeats, order reversed each time, median shown:" if repeats > 1 else ":")
    )
    rates: dict[str, list[float]] = {c: [] for c in configs}
    cpus: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
    failed: dict[str, list[str]] = {}
    clients: list[float] = []
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(senders, mp_context=context) as pool:
        list(pool.map(_pid, range(senders * 4)))  # the senders forked before timing
        for repeat in range(repeats):
            for config in configs if repeat % 2 == 0 else configs[::-1]:
                if config in failed:
                    continue
                qmailqueue, env = bench.configs[config]
                shares = [range(i, total, senders) for i in range(senders)]
                service_before = cpu_seconds(bench.service_pids())
                started = time.perf_counter()
                futures = [
                    pool.submit(_sender, str(bench.home), qmailqueue, env, config, share)
                    for share in shares
                ]
                results = [future.result() for future in futures]
                elapsed = time.perf_counter() - started
                service_cpu = cpu_seconds(bench.service_pids()) - service_before
                failures = [f for fails, _, _ in results for f in fails]
                problem = check_queue(bench.home, {config: total})
                if failures or problem:
                    failed[config] = [f"{len(failures)} not accepted; {problem}", *failures[:5]]
                    continue
                rates[config].append(total / elapsed)
                session_cpu = sum(c for _, c, _ in results)
                clients.append(sum(c for _, _, c in results) / total)
                cpus[config].append(((session_cpu + service_cpu) / total, service_cpu / total))
                print(
                    f"  ({LABELS[config]}: {total / elapsed:.1f} msg/s)",
                    file=sys.stderr,
                    flush=True,
                )
    median = {c: statistics.median(r) for c, r in rates.items() if r}
    print(f"  {'':36} {'msg/s':>7} {'CPU ms/msg':>10} {'(services)':>10} {'x simscan':>9}")
    for config in configs:
        if config in failed:
            print(f"  {LABELS[config]:<36} FAILED: " + "\n    ".join(failed[config]))
            continue
        cpu = statistics.median(c for c, _ in cpus[config]) * 1000
        services = statistics.median(s for _, s in cpus[config]) * 1000
        spread = f"  ({min(rates[config]):.1f}-{max(rates[config]):.1f})" if repeats > 1 else ""
        print(
            f"  {LABELS[config]:<36} {median[config]:7.1f} {cpu:10.1f} {services:10.1f} "
            f"{ratio(median[config], median.get('simscan')):>9}{spread}"
        )
    for config, why in bench.skipped.items():
        print(f"  {LABELS[config]:<36} skipped: {why}")
    print("  (CPU: the sessions' processes and the services: server, clamd)")
    if clients:
        own = statistics.median(clients) * 1000
        print(f"  (the senders, this Python, cost {own:.1f} ms CPU a session more)")
    for config in ("resident-c", "resident-py"):
        if config in median and "simscan" in median:
            print(
                target(
                    f"{LABELS[config]} >= 1.5x simscan's msg/s "
                    f"({median[config] / median['simscan']:.2f}x)",
                    median[config] >= 1.5 * median["simscan"],
                )
            )


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few runs: a smoke test")
    parser.add_argument(
        "--only",
        default="",
        help="comma list of sections (small, large, sustained) and/or configurations "
        "(none, simscan, oneshot, resident-py, resident-c)",
    )
    parser.add_argument("--rounds", type=int, help="small: rounds (default 200; quick 10)")
    parser.add_argument("--messages", type=int, help="sustained: per config (2000; quick 100)")
    parser.add_argument("--senders", type=int, default=4, help="sustained: senders (4)")
    parser.add_argument("--repeats", type=int, default=1, help="sustained: runs of each (1)")
    parser.add_argument(
        "--workers", type=int, help="qqfilter serve --workers (default: the server's own)"
    )
    parser.add_argument("--large-mb", type=int, default=10, help="large: attachment MB (10)")
    parser.add_argument("--large-runs", type=int, help="large: runs each (default 5; quick 2)")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    unknown = only - set(SECTIONS) - set(CONFIGS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    sections = [s for s in SECTIONS if s in only] or list(SECTIONS)
    wanted = [c for c in CONFIGS if c in only] or list(CONFIGS)
    rounds = args.rounds or (10 if args.quick else 200)
    total = args.messages or (100 if args.quick else 2000)
    large_runs = args.large_runs or (2 if args.quick else 5)

    print(machine())
    scratch = Path(tempfile.mkdtemp(prefix="qqf-realqmail-"))
    bench = Bench(scratch, print, args.workers)
    try:
        try:
            bench.start(wanted)
        except realqmail.Unavailable as exc:
            raise SystemExit(f"bench/realqmail.py cannot run here: {exc}") from None
        home = bench.home
        with realqmail.exclusive(home):
            realqmail.config(home, "mx.example.org", rcpthosts=["example.org", "mx.example.org"])
            realqmail.empty_queue(home)
            configs = [c for c in wanted if c in bench.configs]
            print(
                "qqfilter checks: clamd (the same clamd as simscan), attachments, recipients "
                "(QQF_RCPTCHECK=any), SPF=3 against a local nsd; server: " + bench.server_shape
            )
            if "small" in sections:
                small(bench, configs, rounds)
            if "large" in sections:
                picked: list[str] = [c for c in ("none", "simscan", "resident-c") if c in configs]
                if "resident-c" not in bench.configs and "resident-py" in configs:
                    picked.append("resident-py")
                large(bench, picked, large_runs, args.large_mb)
            if "sustained" in sections:
                picked = [c for c in configs if c != "oneshot"]
                sustained(bench, picked, total, args.senders, args.repeats)
            leftovers = bench.simscan.leftovers()
            if leftovers:
                print(f"simscan left {len(leftovers)} work directories in {bench.simscan.workdir}")
        print("\nload average at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    finally:
        bench.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

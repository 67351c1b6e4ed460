"""Benchmark: cost per message of the resident clients, the one-shot program, and the floor.

    .venv/bin/python bench/resident.py

Every check on, with real services started here as the tests start them: a local clamd
(QQF_CLAMD), SPF at level 3 through a local nsd (QQF_DNS), attachments, recipient validation
against the test qmail home. The QMAILQUEUE program is the wrapper install.sh writes (run with
-IS), and the compiled client install.sh builds beside it when there is a C compiler
(qqfilter-queue); qmail-queue is a stand-in shell script that reads the message. Prints, from
one run:

- per small message, wall and CPU (user+sys of the client and what it execs), and the resident
  server's CPU: the stand-in alone, python3 -IS -c pass, each resident client, the one-shot
  program; targets: resident <= 2x python's floor, one-shot <= 8x;
- the client process alone, Python and compiled (a refusal: nothing exec'd after it), wall and
  CPU; target: compiled <= 2 ms of CPU;
- sustained: 2,000 messages from 4 concurrent senders, messages per second each mode, and the
  server's RSS before and after (target: growth under 5 MB);
- large: 28 MB and 100 MB messages, time and peak RSS of the client and of the server.
"""

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from clamav import Clamd  # noqa: E402 (the tests' helpers start the services)
from measure import cpu_of  # noqa: E402 (the server's CPU, its workers included)
from nameserver import Nsd  # noqa: E402

MESSAGE = (
    b"Received: from unknown (HELO mail.spf.test) (192.0.2.1)\n"
    b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
    b"From: alice@pass.spf.test\nTo: joe@example.org\nSubject: lunch\n\n"
    + b"A few lines of an ordinary message.\n"
    * 30
)
ENVELOPE = b"Falice@pass.spf.test\0Tjoe@example.org\0\0"


def submit(command: list[str], env: dict[str, str], message: bytes = MESSAGE) -> int:
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


def per_message(
    command: list[str], env: dict[str, str], runs: int, code: int = 0, server: int = 0
) -> tuple[float, float, float]:
    """Milliseconds of wall time, of CPU (children's user+sys) and of the ``server``'s CPU (its
    processes': the workers too) per run; each run must exit with ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    served = cpu_of(server) if server else 0.0
    started = time.perf_counter()
    for _ in range(runs):
        if submit(command, env) != code:
            raise SystemExit(f"{command[0]} did not exit {code}")
    wall = (time.perf_counter() - started) / runs * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / runs * 1000
    server_cpu = (cpu_of(server) - served) / runs * 1000 if server else 0.0
    return wall, cpu, server_cpu


def sustained(command: list[str], env: dict[str, str], total: int, senders: int) -> float:
    """Messages per second from ``senders`` concurrent senders."""
    errors = []

    def sender(count: int) -> None:
        for _ in range(count):
            if submit(command, env) != 0:
                errors.append(1)

    threads = [threading.Thread(target=sender, args=(total // senders,)) for _ in range(senders)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} messages were not queued")
    return total / (time.perf_counter() - started)


def status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def large(command: list[str], env: dict[str, str], size_mb: int, scratch: Path) -> tuple:
    """Seconds and the client's peak RSS (KiB) for one message of about ``size_mb`` MB."""
    import base64

    body = base64.encodebytes(os.urandom(size_mb * 3 // 4 << 20))
    message = (
        MESSAGE.split(b"\n\n")[0] + b"\nMIME-Version: 1.0\nContent-Type: multipart/mixed; "
        b'boundary="b"\n\n--b\nContent-Type: text/plain\n\nsee the file\n--b\n'
        b'Content-Type: application/octet-stream; name="data.bin"\n'
        b"Content-Transfer-Encoding: base64\n\n" + body + b"--b--\n"
    )
    peak_file = scratch / "peak"
    started = time.perf_counter()
    code = submit(
        [sys.executable, str(ROOT / "tests" / "peak_rss.py"), *command],
        {**env, "PEAK_RSS_FILE": str(peak_file)},
        message,
    )
    took = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"the {size_mb} MB message was not queued ({code})")
    return took, int(peak_file.read_text())


def main() -> None:
    scratch = Path(tempfile.mkdtemp(prefix="qqf-bench-"))
    scratch.chmod(0o755)  # qmail's user (qmaild, where there is one) runs the wrapper in it
    clamd, nsd, server = Clamd(), Nsd(), None
    try:
        home = scratch / "qmail"
        shutil.copytree(ROOT / "fixtures" / "qmailhome", home, copy_function=shutil.copyfile)
        assign = home / "users" / "assign"
        assign.write_text(assign.read_text().replace("@HOME@", str(home)))
        (home / "bin").mkdir()
        venv = scratch / "venv"  # install.sh as an administrator runs it, not into this venv
        subprocess.run(
            [str(ROOT / "install.sh"), "--qmail", "--qmailhome", str(home), "--venv", str(venv)],
            check=True,
            capture_output=True,
        )
        wrapper = [str(home / "bin" / "qqfilter")]
        compiled = [str(home / "bin" / "qqfilter-queue")]  # install.sh builds it with a cc
        if not os.path.exists(compiled[0]):
            raise SystemExit("install.sh built no compiled client: is there a C compiler (cc)?")
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
            "QQF_CLAMD": clamd.unix,
            "QQF_DNS": nsd.address,
            "SPF": "3",
            "QQF_RCPTCHECK": "any",
            "TCPREMOTEIP": "192.0.2.1",
        }
        socket_path = str(scratch / "qqfilter.sock")
        server = subprocess.Popen(
            [str(venv / "bin" / "qqfilter"), "serve", "--socket", socket_path],
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"},
        )
        while not os.path.exists(socket_path):
            time.sleep(0.02)
        resident = {**env, "QQF_SOCKET": socket_path, "QQF_SOCKETFALLBACK": "tempfail"}
        floor_cmd = [sys.executable, "-I", "-S", "-c", "pass"]
        runs = 100
        for command in (wrapper, compiled):  # warm every path once
            submit(command, resident)
            submit(command, env)
        standin = per_message([str(queue)], env, runs)
        floor = per_message(floor_cmd, env, runs)
        python_client = per_message(wrapper, resident, runs, server=server.pid)
        compiled_client = per_message(compiled, resident, runs, server=server.pid)
        oneshot = per_message(wrapper, env, runs)
        print(f"per small message, {runs} runs each, all checks on (clamd, SPF=3, MIME, rcpt):")
        print(f"  {'':34} {'wall ms':>8} {'CPU ms':>8} {'x floor':>8} {'server CPU ms':>14}")
        for label, (wall, cpu, served) in (
            ("qmail-queue stand-in alone", standin),
            ("python3 -I -S -c pass", floor),
            ("resident, Python client", python_client),
            ("resident, compiled client", compiled_client),
            ("one-shot (Python)", oneshot),
        ):
            also = f"{served:14.1f}" if served else ""
            print(f"  {label:<34} {wall:8.1f} {cpu:8.1f} {wall / floor[0]:8.2f} {also}")
        print("  (CPU: the client and the stand-in it becomes; targets: resident <= 2x the floor,")
        print("  one-shot <= 8x)")

        # the client process alone: a refusal (the size limit), so nothing runs after it
        refused = {**resident, "QQF_MAXSIZE": "100"}
        client_runs = 300
        print(f"the client process alone (a refusal, nothing exec'd after it), {client_runs} runs:")
        print(f"  {'':34} {'wall ms':>8} {'CPU ms':>8} {'server CPU ms':>14}")
        true = [shutil.which("true") or "/bin/true"]
        wall, cpu, _ = per_message(true, refused, client_runs)
        print(f"  {'a C program that does nothing (true)':<34} {wall:8.2f} {cpu:8.2f}")
        for label, command in (("Python client", wrapper), ("compiled client", compiled)):
            wall, cpu, served = per_message(command, refused, client_runs, 31, server.pid)
            print(f"  {label:<34} {wall:8.2f} {cpu:8.2f} {served:14.2f}")
        size = os.path.getsize(compiled[0])
        print(f"  compiled client: {size / 1024:.0f} KB; target: its CPU <= 2 ms a message")

        rss_before = status(server.pid, "VmRSS")
        resident_rate = sustained(wrapper, resident, 2000, 4)
        compiled_rate = sustained(compiled, resident, 2000, 4)
        rss_after = status(server.pid, "VmRSS")
        oneshot_rate = sustained(wrapper, env, 2000, 4)
        print("sustained, 2,000 messages from 4 concurrent senders:")
        print(
            f"  resident, Python client {resident_rate:7.1f} messages/s   compiled client "
            f"{compiled_rate:7.1f} messages/s   one-shot {oneshot_rate:7.1f} messages/s"
        )
        print(
            f"  server RSS {rss_before / 1024:.1f} MB before, {rss_after / 1024:.1f} MB after "
            f"4,000 messages (growth {(rss_after - rss_before) / 1024:+.1f} MB; target under 5 MB)"
        )

        print("large messages (one base64 attachment; resident: compiled client), time, RSS:")
        for size in (28, 100):
            hwm_before = status(server.pid, "VmHWM")
            took, client_peak = large(compiled, resident, size, scratch)
            server_peak = status(server.pid, "VmHWM")
            took_one, one_peak = large(wrapper, env, size, scratch)
            print(
                f"  {size:3d} MB resident: {took:5.2f} s, client {client_peak / 1024:5.1f} MB, "
                f"server peak {server_peak / 1024:5.1f} MB (was {hwm_before / 1024:.1f}); "
                f"one-shot: {took_one:5.2f} s, {one_peak / 1024:5.1f} MB"
            )
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        clamd.stop()
        nsd.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

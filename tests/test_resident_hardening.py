"""``qqfilter serve`` against the peers that would stop it, misuse it, or hang its clients.

Issue 22's red-team findings, each on the real server and the real client: a peer that is
not allowed is closed before anything is read; idle connections, a 5,000-digit pid and running
out of descriptors cost log lines, never the server; SIGTERM is quick with idle connections
open; a peer of another user chooses no program, path or server, nor the environment of the
programs a check runs; a stopped server costs the client QQF_SOCKETTIMEOUT, not forever; an
environment too big for one packet is done in-process. The client's own cases run with both
clients, the Python one and the compiled one (``client``, test_compiled_client.py).

A peer of another user is this test run as ``nobody`` through setpriv, keeping
CAP_DAC_OVERRIDE so that it can run the venv's Python wherever it lives (under /root, say):
SO_PEERCRED sees uid 65534 all the same.
"""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import QQFILTER, Resident, assert_clean_failure, envelope
from test_compiled_client import client_fixture, compiled_fixture  # noqa: F401 (fixtures)

from qqfilter.resident import wire

ENV = envelope(b"alice@example.com", b"bob@example.org")
PLAIN = b"Subject: hi\n\nhello\n"
NOBODY = 65534
SETPRIV = shutil.which("setpriv")
AS_NOBODY = [
    str(SETPRIV),
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=+dac_override",
    "--ambient-caps=+dac_override",
]
needs_another_user = pytest.mark.skipif(
    os.getuid() != 0 or SETPRIV is None,
    reason="a peer of another uid needs root (to become nobody) and setpriv",
)


class Serving(Resident):
    """A ``qqfilter serve`` with an environment and limits of the test's choosing."""

    def __init__(self, directory, *args: str, env=None, preexec_fn=None) -> None:
        self.socket = str(directory / "qqfilter.sock")
        self.log = directory / "serve.log"
        self.process = subprocess.Popen(
            [QQFILTER, "serve", "--socket", self.socket, *args],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 (the process keeps it)
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
            preexec_fn=preexec_fn,
        )
        give_up = time.monotonic() + 30
        while "serving on" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > give_up:
                raise RuntimeError(f"qqfilter serve did not start:\n{self.log.read_text()}")
            time.sleep(0.02)


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    running = Serving(tmp_path / "server")
    yield running
    running.stop()


def through(qq, server, command=None, **env: str):
    """Submit PLAIN through ``server``; a failure to reach it is 71, not in-process work."""
    settings = {"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail", **env}
    return qq.submit(PLAIN, ENV, env=settings, command=command)


def idle_connections(path: str, count: int, patience: float = 0.0) -> list[socket.socket]:
    """Up to ``count`` connections that send nothing; fewer when the listen backlog stays
    full for ``patience`` seconds."""
    opened: list[socket.socket] = []
    give_up = time.monotonic() + patience
    while len(opened) < count:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        connection.setblocking(False)
        try:
            connection.connect(path)
        except BlockingIOError:  # the backlog is full: the server takes them at its pace
            connection.close()
            if time.monotonic() > give_up:
                break
            time.sleep(0.01)
            continue
        opened.append(connection)
    return opened


def in_background(function) -> dict:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=function()))
    thread.start()
    result["thread"] = thread
    return result


def processes(server) -> list[int]:
    """The server's process and its workers (its children)."""
    pids = [server.process.pid]
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == server.process.pid:
            pids.append(int(entry))
    return pids


def signal_all(server, number: int) -> None:
    """``number`` to the server and each of its workers (SIGSTOP: a server that is stopped)."""
    for pid in processes(server):
        os.kill(pid, number)


def assert_no_traceback(server) -> None:
    log = server.log.read_text()
    assert "Traceback" not in log, log


# Item 4: nothing a peer does stops the server.


@needs_another_user
def test_a_peer_not_allowed_is_answered_and_closed_before_anything_is_read(qq, server):
    """It sends nothing (or a 5,000-digit pid): it gets the refusal and the end at once."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        "s.settimeout(3)\n"
        "s.connect(sys.argv[1])\n"
        "if sys.argv[2] == 'pid':\n"
        "    try:\n"
        "        s.send(b'QQF1\\0' + b'9' * 5000 + b'\\0\\0')\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        "    first = s.recv(65536)\n"
        "except ConnectionResetError:  # what was sent is unread: the answer is behind this\n"
        "    first = s.recv(65536)\n"
        "try:\n"
        "    end = s.recv(65536)\n"
        "except ConnectionResetError:  # closed with what was sent unread: the end too\n"
        "    end = b''\n"
        "print(repr(first), repr(end))\n"
    )
    python = shutil.which("python3") or "python3"
    for mode in ("idle", "pid"):
        started = time.monotonic()
        out = subprocess.run(
            [*AS_NOBODY, python, "-c", code, server.socket, mode],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert time.monotonic() - started < 2.5, out
        assert "this user may not use it" in out.stdout, out.stderr
        assert out.stdout.rstrip().endswith("b''"), out.stdout  # then the end: closed
    out = qq.submit(
        PLAIN,
        ENV,
        env={"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail"},
        command=[*AS_NOBODY, QQFILTER],
    )
    assert_clean_failure(out, 71)
    assert out.field("reason") == "resident server: this user may not use it"
    assert out.field("verdict") == "tempfail"  # as every other tempfail
    assert server.log.read_text().count(f"uid {NOBODY}: not an allowed user") == 3
    assert_no_traceback(server)


def test_a_five_thousand_digit_pid_is_one_log_line(server):
    """An allowed peer's malformed packets: 71 to it, one line in the server's log each."""
    message_r, message_w = os.pipe()
    envelope_r, envelope_w = os.pipe()
    packets = (
        b"QQF1\0" + b"9" * 5000 + b"\0\0",
        b"QQF1\0" + b"1\0" + b"4," * 5000 + b"\0",
        b"QQF1\0" + b"1\0\0" + b"A=b\0" * 5000,
    )
    try:
        for packet in packets:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
                raw.settimeout(5)
                raw.connect(server.socket)
                raw.sendmsg([packet], wire.rights((message_r, envelope_r)))
                answer = raw.recv(65536).split(b"\0")
            assert answer[:3] == [b"QQF1", b"exit", b"71"]
            assert b'reason="resident server: malformed request"' in answer[5]
    finally:
        for fd in (message_r, message_w, envelope_r, envelope_w):
            os.close(fd)
    log = server.log.read_text()
    assert "pid is not a number of at most 10 digits" in log
    assert "descriptor is not a number" in log or "more than 4 reply descriptors" in log
    assert "more than 4096 variables" in log
    assert log.count("malformed request from") == 3
    assert_no_traceback(server)


def test_running_out_of_descriptors_pauses_the_server_and_never_stops_it(qq, tmp_path):
    """Idle connections past the descriptor limit: accept() fails (EMFILE), a log line and a
    pause; the server serves again once they are gone, and SIGTERM still stops it at once.
    Each of the 2 workers has 100 of the 200 connections: past its 64 descriptors."""
    (tmp_path / "server").mkdir()
    limited = Serving(
        tmp_path / "server",
        "--workers",
        "2",
        "--connections",
        "200",
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)),
    )
    try:
        idle = idle_connections(limited.socket, 150)
        time.sleep(1.0)
        assert limited.process.poll() is None, limited.log.read_text()
        assert "accept failed: Too many open files; pausing" in limited.log.read_text()
        for connection in idle:
            connection.close()
        time.sleep(0.8)  # the pause, and the idle ones' threads end
        out = through(qq, limited)
        assert out.returncode == 0, out.stderr
        assert out.queued
        idle = idle_connections(limited.socket, 150)
        started = time.monotonic()
        limited.process.send_signal(signal.SIGTERM)
        assert limited.process.wait(10) == 0
        assert time.monotonic() - started < 2
        for connection in idle:
            connection.close()
    finally:
        limited.stop()
    assert (
        "--connections 200 (100 in each of 2 workers) may need 800 descriptors in each worker, "
        "and the limit is 64" in limited.log.read_text()
    )
    assert not os.path.exists(limited.socket)
    assert_no_traceback(limited)


def test_past_the_connection_cap_new_ones_wait_and_idle_ones_are_closed(qq, tmp_path):
    """--connections 2 taken by idle peers: a client waits in the backlog until the server
    closes them (no request within 5 s), then is served."""
    (tmp_path / "server").mkdir()
    capped = Serving(tmp_path / "server", "--connections", "2")
    try:
        idle = idle_connections(capped.socket, 2)
        started = time.monotonic()
        busy = in_background(lambda: through(qq, capped))
        time.sleep(1.0)
        assert "out" not in busy  # waiting in the backlog
        busy["thread"].join(15)
        waited = time.monotonic() - started
        for connection in idle:
            connection.setblocking(True)
            assert connection.recv(100) == b""  # closed by the server
            connection.close()
    finally:
        capped.stop()
    assert busy["out"].returncode == 0, busy["out"].stderr
    assert 4 < waited < 8
    assert capped.log.read_text().count("nothing within 5 s; closed") == 2
    assert_no_traceback(capped)


def test_sigterm_with_hundreds_of_idle_connections_is_quick(server):
    idle = idle_connections(server.socket, 300, patience=1)
    assert len(idle) >= 200  # the server's 100, and the listen backlog
    time.sleep(0.5)
    pids = processes(server)
    threads = sum(len(os.listdir(f"/proc/{pid}/task")) for pid in pids)
    assert threads <= 100 + 5 * len(pids)  # the cap, each main thread, a few of Python's
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) == 0
    assert time.monotonic() - started < 2
    for connection in idle:
        connection.close()
    assert "stopped" in server.log.read_text()
    assert not os.path.exists(server.socket)
    assert_no_traceback(server)


def test_sigterm_waits_for_a_message_in_work_no_longer_than_the_grace(qq, tmp_path):
    """A message that never finishes arriving holds its thread: SIGTERM waits --grace
    seconds for it, then stops; its client gets 71 (nothing was queued)."""
    (tmp_path / "server").mkdir()
    graceful = Serving(tmp_path / "server", "--grace", "1")
    env_read, env_write = os.pipe()
    client = subprocess.Popen(
        [QQFILTER],
        stdin=subprocess.PIPE,
        stdout=env_read,
        stderr=subprocess.PIPE,
        env={**qq.env, "QQF_SOCKET": graceful.socket, "QQF_SOCKETFALLBACK": "tempfail"},
    )
    os.close(env_read)
    try:
        client.stdin.write(PLAIN[:8])  # and never the rest
        client.stdin.flush()
        time.sleep(0.5)
        started = time.monotonic()
        graceful.process.send_signal(signal.SIGTERM)
        assert graceful.process.wait(10) == 0
        assert 0.9 < time.monotonic() - started < 2.5
        stderr = client.stderr.read().decode()
        assert client.wait(10) == 71, stderr
        assert "resident server ended without an answer" in stderr
    finally:
        client.stdin.close()
        os.close(env_write)
        graceful.stop()
    assert not (qq.record / "message").exists()
    assert "1 messages still in work after 1 s: not waiting longer" in graceful.log.read_text()
    assert_no_traceback(graceful)


# Item 5: a peer of another user sets per-connection facts and settings only.


def _script(path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\nexit 0\n")
    path.chmod(0o755)
    return str(path)


@needs_another_user
def test_a_peer_of_another_user_chooses_no_program_path_or_server(qq, tmp_path):
    """The server's own QHPSI scanner runs, in the server's environment with the peer's
    connection facts over it; the peer's QHPSI, QQF_SPOOLDIR, QQF_CLAMD, QQF_QMAILQUEUE,
    PATH, LD_LIBRARY_PATH are not used; its TCPREMOTEIP, RELAYCLIENT, QQF_MAXSIZE are."""
    marker = tmp_path / "peer-program-ran"
    dump = tmp_path / "scanner-environment"
    server_spool = tmp_path / "server-spool"
    server_spool.mkdir()
    (tmp_path / "server").mkdir()
    server_path = os.environ.get("PATH", "/usr/bin:/bin")
    own = Serving(
        tmp_path / "server",
        "--users",
        "nobody",
        env={
            "QHPSI": _script(tmp_path / "dump-env", f"/usr/bin/env > {dump}"),
            "QQF_SPOOLDIR": str(server_spool),
            "QQF_QMAILQUEUE": str(qq.queue),
            "QQF_CONFIG": qq.env["QQF_CONFIG"],
        },
    )
    peer = {
        "QQF_SOCKET": own.socket,
        "QQF_SOCKETFALLBACK": "tempfail",
        "QHPSI": _script(tmp_path / "peer-program", f"touch {marker}"),
        "QQF_SPOOLDIR": "/nonexistent",
        "QQF_CLAMD": "unix:/nonexistent/clamd.sock",
        "QQF_QMAILQUEUE": "/nonexistent/qmail-queue",
        "PATH": f"/peer/bin:{server_path}",
        "LD_LIBRARY_PATH": "/peer/lib",
        "PEER_ONLY": "yes",
        "TCPREMOTEIP": "198.51.100.7",
        "QQF_MAXSIZE": "1000",
        "QQF_DKIMSIGN": "relayclient",  # the server's keys are not the peer's to sign with
    }
    try:
        out = qq.submit(PLAIN, ENV, env=peer, command=[*AS_NOBODY, QQFILTER])
        assert out.returncode == 0, out.stderr
        assert out.queued
        assert out.field("ip") == "198.51.100.7"
        assert out.field("ignored") == (
            "QHPSI,QQF_CLAMD,QQF_CONFIG,QQF_DKIMSIGN,QQF_QMAILHOME,QQF_QMAILQUEUE,QQF_SPOOLDIR"
        )
        assert not marker.exists()
        seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
        assert seen["PATH"] == server_path
        assert seen["TCPREMOTEIP"] == "198.51.100.7"
        assert seen["QQF_MAXSIZE"] == "1000"
        assert seen["QQF_SPOOLDIR"] == str(server_spool)
        for theirs in ("LD_LIBRARY_PATH", "PEER_ONLY", "QQF_CLAMD", "FAKEQQ_DIR"):
            assert theirs not in seen, theirs

        small = {**peer, "QQF_MAXSIZE": "5"}
        out = qq.submit(PLAIN, ENV, env=small, command=[*AS_NOBODY, QQFILTER])
        assert_clean_failure(out, 31)  # the peer's per-connection limit applies

        dump.unlink()
        relaying = {**peer, "RELAYCLIENT": "", "QQF_SCANSKIP": "relayclient", "QQF_LOG": "json"}
        out = qq.submit(PLAIN, ENV, env=relaying, command=[*AS_NOBODY, QQFILTER])
        assert out.returncode == 0, out.stderr
        (line,) = out.lines
        fields = json.loads(line)
        assert "skipped: RELAYCLIENT" in fields["notes"]
        assert fields["ignored"].startswith("QHPSI,")
        assert not dump.exists() and not marker.exists()

        # the server's own user (root here) keeps its whole environment, as before
        out = through(qq, own, QHPSI=str(tmp_path / "peer-program"))
        assert out.returncode == 0, out.stderr
        assert out.field("ignored") is None
        assert marker.exists()
    finally:
        own.stop()
    assert not any(server_spool.iterdir())
    assert_no_traceback(own)


# Item 8: the client's deadline, and the request too big for one packet.


def test_a_stopped_server_is_71_within_the_clients_deadline(qq, server, client):
    signal_all(server, signal.SIGSTOP)
    # without a deadline the client would wait for ever: the server wakes after 10 s then
    waking = threading.Timer(10, lambda: signal_all(server, signal.SIGCONT))
    waking.start()
    try:
        started = time.monotonic()
        out = through(qq, server, client, QQF_SOCKETTIMEOUT="1")
        took = time.monotonic() - started
    finally:
        waking.cancel()
        signal_all(server, signal.SIGCONT)
    assert_clean_failure(out, 71)
    assert out.field("reason") == "resident server gave no answer within 1 s"
    assert took < 3


def test_a_full_backlog_is_71_within_the_clients_deadline(qq, server, client):
    """A stopped server whose listen backlog is full: connect() cannot even start."""
    signal_all(server, signal.SIGSTOP)
    idle = idle_connections(server.socket, 1000)
    waking = threading.Timer(10, lambda: signal_all(server, signal.SIGCONT))
    waking.start()  # as above: without a deadline, the client would wait for ever
    try:
        started = time.monotonic()
        out = through(qq, server, client, QQF_SOCKETTIMEOUT="1")
        took = time.monotonic() - started
    finally:
        waking.cancel()
        signal_all(server, signal.SIGCONT)
        for connection in idle:
            connection.close()
    assert_clean_failure(out, 71)
    assert out.field("reason") == "resident server busy: no room in its backlog for 1 s"
    assert took < 3


def test_a_message_still_arriving_does_not_count_against_the_deadline(qq, server, client):
    """qmail-smtpd writes the message as the SMTP client sends it: a slow one is not the
    server's delay. The deadline starts when the message is all in."""
    env_read, env_write = os.pipe()
    process = subprocess.Popen(
        client,
        stdin=subprocess.PIPE,
        stdout=env_read,
        stderr=subprocess.PIPE,
        env={
            **qq.env,
            "QQF_SOCKET": server.socket,
            "QQF_SOCKETFALLBACK": "tempfail",
            "QQF_SOCKETTIMEOUT": "1",
        },
    )
    os.close(env_read)
    process.stdin.write(PLAIN[:8])
    process.stdin.flush()
    time.sleep(2.5)
    process.stdin.write(PLAIN[8:])
    process.stdin.close()
    os.write(env_write, ENV)
    os.close(env_write)
    stderr = process.stderr.read().decode()
    assert process.wait(10) == 0, stderr
    assert "verdict=accept" in stderr
    assert (qq.record / "message").read_bytes() == PLAIN


def test_an_environment_too_big_for_one_packet_is_done_in_process(qq, server, client):
    # 300 KB in three variables: exec takes no single string over 128 KB
    big = {f"BIG{i}": "x" * 100_000 for i in range(3)}
    out = qq.submit(PLAIN, ENV, env={"QQF_SOCKET": server.socket, **big}, command=client)
    assert out.returncode == 0, out.stderr
    assert out.queued
    assert out.message == PLAIN
    assert len(out.lines) == 1 and "verdict=accept" in out.stderr
    out = through(qq, server, client, **big)
    assert_clean_failure(out, 71)
    reason = out.field("reason")
    assert reason.startswith(f"resident server {server.socket} unreachable: a request of ")
    assert reason.endswith(" bytes is too big for it")
    assert_no_traceback(server)


# Issue 21: no traceback in serve's command line. What cannot be carried out is one line on
# stderr and exit status 2, before anything is served; nothing at the path is removed.


def serve_command(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, QQFILTER, "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


def assert_one_line(out: subprocess.CompletedProcess, words: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert words in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 or "usage:" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--socket", "/no/dir/s.sock"), "/no/dir/s.sock: cannot listen there: No such file"),
        (("--users", "nosuch"), "qqfilter serve: --users nosuch: no such user"),
        (("--users", "root,nosuch"), "qqfilter serve: --users nosuch: no such user"),
        (("--group", "nosuch"), "qqfilter serve: --group nosuch: no such group"),
        (("--socket", "/tmp/" + "a" * 120), "cannot listen there: AF_UNIX path too long"),
        (("--socket", ""), "qqfilter serve: give --socket PATH (or QQF_SOCKET)"),
        (("--max", "0"), "argument --max: '0': give a whole number, 1 or more"),
        (("--connections", "many"), "argument --connections: 'many': give a whole number"),
        (("--wait", "-1"), "argument --wait: '-1': give seconds, 0 or more"),
        (("--grace", "inf"), "argument --grace: 'inf': give seconds, 0 or more"),
    ],
)
def test_a_command_line_that_cannot_be_carried_out_is_one_line(tmp_path, args, words):
    path = str(tmp_path / "s.sock")
    out = serve_command("--socket", path, *args)
    assert_one_line(out, words)
    assert not os.path.exists(path)


def test_a_path_that_is_not_a_socket_is_never_replaced(tmp_path):
    """A file (as root: /etc/passwd, say), a directory, a link: left as they are."""
    precious = tmp_path / "file"
    precious.write_text("keep me\n")
    (tmp_path / "directory").mkdir()
    (tmp_path / "link").symlink_to(precious)
    for name in ("file", "directory", "link"):
        out = serve_command("--socket", str(tmp_path / name))
        assert_one_line(out, f"{tmp_path / name}: exists and is not a socket; not replacing it")
    assert precious.read_text() == "keep me\n"
    assert (tmp_path / "directory").is_dir() and (tmp_path / "link").is_symlink()


def test_a_socket_in_use_is_not_taken(tmp_path, server):
    """A live server's socket, and a socket of another kind that answers (a stream one)."""
    out = serve_command("--socket", server.socket)
    assert_one_line(out, f"{server.socket}: another server answers there")
    assert server.process.poll() is None
    assert os.path.exists(server.socket)
    other = str(tmp_path / "stream.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(other)
        stream.listen()
        out = serve_command("--socket", other)
        assert_one_line(out, f"{other}: cannot tell whether a server answers there: Protocol")
        assert os.path.exists(other)


def test_a_directory_it_cannot_write_is_one_line(tmp_path):
    """As root, the server is started without CAP_DAC_OVERRIDE: the mode binds it too."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o555)
    prefix: tuple[str, ...] = ()
    if os.getuid() == 0:
        if SETPRIV is None:
            pytest.skip("as root, an unwritable directory needs setpriv to drop the capability")
        prefix = (SETPRIV, "--bounding-set=-dac_override,-dac_read_search")
    out = serve_command("--socket", str(closed / "s.sock"), prefix=prefix)
    assert_one_line(out, f"{closed / 's.sock'}: cannot listen there: Permission denied")
    assert not any(closed.iterdir())

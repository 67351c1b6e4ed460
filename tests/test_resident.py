"""``qqfilter serve`` and its thin client: what only resident mode has.

The pipeline cases themselves run both ways in the modules marked BOTH_MODES; here: the
fallback, who may connect, the concurrency limit, SIGHUP, SIGTERM with work in flight, a
server that dies mid-message, and the client's imports. The client's own cases run with both
clients, the Python one and the compiled one (``client``, test_compiled_client.py).
"""

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import QQFILTER, ROOT, Resident, assert_clean_failure, envelope
from test_compiled_client import client_fixture, compiled_fixture  # noqa: F401 (fixtures)

ENV = envelope(b"alice@example.com", b"bob@example.org")
PLAIN = b"Subject: hi\n\nhello\n"


@pytest.fixture
def server(tmp_path):
    running = Resident(tmp_path)
    yield running
    running.stop()


def through(qq, server, command=None, **env: str):
    """Submit PLAIN through ``server``; a failure to reach it is 71, not in-process work."""
    settings = {"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail", **env}
    return qq.submit(PLAIN, ENV, env=settings, command=command)


def test_a_message_goes_through_the_server_and_the_client_becomes_qmail_queue(qq, server, client):
    out = through(qq, server, client)
    assert out.returncode == 0, out.stderr
    assert out.message == PLAIN
    assert out.envelope == ENV
    assert out.fds == [0, 1, 2]
    assert out.field("verdict") == "accept"


def test_without_a_server_the_client_works_in_process_or_tempfails(qq, tmp_path, client):
    gone = str(tmp_path / "no.sock")
    out = qq.submit(PLAIN, ENV, env={"QQF_SOCKET": gone}, command=client)
    assert out.returncode == 0, out.stderr
    assert out.queued
    assert out.field("fallback").endswith(f"{gone}: No such file or directory")
    tempfail = {"QQF_SOCKET": gone, "QQF_SOCKETFALLBACK": "tempfail"}
    out = qq.submit(PLAIN, ENV, env=tempfail, command=client)
    assert_clean_failure(out, 71)
    assert out.field("reason") == f"resident server {gone} unreachable: No such file or directory"


def test_the_socket_is_the_servers_users_alone(server):
    mode = os.stat(server.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_peers_are_checked_by_their_credentials():
    """SO_PEERCRED on a real socket pair: this process is the peer."""
    import socket

    from qqfilter.resident.server import peer_allowed

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        assert peer_allowed(ours, {os.getuid()}, None)
        assert not peer_allowed(ours, {os.getuid() + 4242}, None)
        assert peer_allowed(ours, {os.getuid() + 4242}, os.getgid())


def test_a_malformed_request_gets_a_clear_71(server):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
        raw.connect(server.socket)
        raw.sendall(b"HELLO\0" + str(os.getpid()).encode())
        answer = raw.recv(65536).split(b"\0")
    assert answer[:3] == [b"QQF1", b"exit", b"71"]
    assert b'reason="resident server: malformed request"' in answer[5]


@pytest.fixture
def slow_scanner(tmp_path):
    """A QHPSI scanner that takes 2 seconds, then says clean."""
    program = tmp_path / "slow-scanner"
    program.write_text("#!/bin/sh\nsleep 2\nexit 0\n")
    program.chmod(0o755)
    return str(program)


def in_background(function) -> dict:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=function()))
    thread.start()
    result["thread"] = thread
    return result


def test_past_the_limit_a_client_waits_then_gets_71(qq, tmp_path, slow_scanner):
    (tmp_path / "limited").mkdir()
    limited = Resident(tmp_path / "limited", "--max", "1", "--wait", "0.5")
    try:
        first = in_background(lambda: through(qq, limited, QHPSI=slow_scanner))
        time.sleep(0.7)
        started = time.monotonic()
        second = qq.submit(
            PLAIN, ENV, env={"QQF_SOCKET": limited.socket, "QQF_SOCKETFALLBACK": "tempfail"}
        )
        waited = time.monotonic() - started
        first["thread"].join(10)
    finally:
        limited.stop()
    assert second.returncode == 71
    assert second.field("reason") == "resident server busy for 0.5 s"
    assert 0.4 < waited < 1.5
    assert first["out"].returncode == 0


def test_sighup_empties_the_dns_cache_and_goes_on(qq, server):
    server.process.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert "SIGHUP: DNS cache emptied" in server.log.read_text()
    assert through(qq, server).returncode == 0


def test_sigterm_finishes_the_message_in_work_then_stops(qq, server, slow_scanner):
    busy = in_background(lambda: through(qq, server, QHPSI=slow_scanner))
    time.sleep(0.7)
    server.process.send_signal(signal.SIGTERM)
    busy["thread"].join(10)
    assert server.process.wait(10) == 0
    assert busy["out"].returncode == 0, busy["out"].stderr
    assert busy["out"].message == PLAIN
    assert not os.path.exists(server.socket)
    assert "stopped" in server.log.read_text()


def test_a_server_killed_mid_message_is_71_and_nothing_is_queued(qq, server, spare_clamd, client):
    spare_clamd.pause()  # the scan hangs: the message is in the server's hands
    busy = in_background(lambda: through(qq, server, client, QQF_CLAMD=spare_clamd.unix))
    time.sleep(1.0)
    server.process.kill()
    busy["thread"].join(10)
    out = busy["out"]
    assert_clean_failure(out, 71)
    assert out.field("reason") == (
        "resident server ended without an answer (stopped or died mid-message)"
    )


def test_a_stale_socket_is_replaced_and_a_live_one_is_not_taken(tmp_path):
    first = Resident(tmp_path)
    first.process.kill()
    first.process.wait()
    assert os.path.exists(first.socket)  # a dead server's socket stays behind
    second = Resident(tmp_path)
    try:
        out = subprocess.run(
            [QQFILTER, "serve", "--socket", second.socket], capture_output=True, text=True
        )
        assert out.returncode != 0
        assert "another server answers there" in out.stderr
    finally:
        second.stop()


def test_the_client_imports_no_pipeline_module(tmp_path, server):
    """The installed wrapper, run as qmail runs it, with -X importtime: only the client."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv = ['qqfilter']; "
        "from qqfilter.cli import main; sys.exit(main())"
    )
    message = tmp_path / "m.eml"
    message.write_bytes(PLAIN)
    queue = tmp_path / "queue.sh"
    queue.write_text("#!/bin/sh\ncat >/dev/null\n")
    queue.chmod(0o755)
    with open(message, "rb") as stdin, open(tmp_path / "m.env", "wb+") as env_file:
        env_file.write(ENV)
        env_file.seek(0)
        out = subprocess.run(
            [sys.executable, "-I", "-S", "-X", "importtime", "-c", code],
            stdin=stdin,
            stdout=env_file,
            stderr=subprocess.PIPE,
            text=True,
            env={
                "QQF_SOCKET": server.socket,
                "QQF_SOCKETFALLBACK": "tempfail",
                "QQF_QMAILQUEUE": str(queue),
                "QQF_CONFIG": "/dev/null",
            },
        )
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "qqfilter.resident.client" in imported
    for heavy in (
        "qqfilter.settings",
        "qqfilter.qmailqueue",
        "qqfilter.checks",
        "socket",
        "enum",
        "signal",
        "json",
        "email",
        "dns",
    ):
        assert heavy not in imported, heavy
    assert "verdict=accept" in out.stderr


def descriptors(server) -> int:
    """Descriptors open in the server's process and its workers (its children)."""
    pids = [server.process.pid]
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == server.process.pid:
            pids.append(int(entry))
    workers = min(len(os.sched_getaffinity(0)), 16)  # the default: a CPU each, --max at most
    assert len(pids) == (1 + workers if workers > 1 else 1)  # one worker: no children
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def test_the_server_keeps_no_descriptor_of_a_finished_message(qq, server):
    """A long-lived server must close each spool: an open one is a file kept on disk."""
    before = descriptors(server)
    for maxsize in ("5", "0", "5", "0") * 5:  # refused and queued, alternately
        out = through(qq, server, QQF_MAXSIZE=maxsize)
        assert out.returncode == (31 if maxsize == "5" else 0), out.stderr
    time.sleep(0.2)
    assert descriptors(server) == before

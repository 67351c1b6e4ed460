"""``qqfilter serve --workers N``: the parent and its pre-forked workers, on the real server.

The workers are the parent's children and each takes messages; one that is killed is replaced
(a line in the log) and mail goes on; workers that die as they start make the parent give up
(exit status 1, the socket removed); SIGHUP reaches every worker; SIGTERM lets the message in
work finish, then nothing is left; SIGKILL of the parent leaves no worker serving; the metrics
are the sum over the workers, and forget what a dead worker held.

Which worker took a message is seen through a QHPSI scanner that writes down its parent's pid
(the worker's), with one connection a worker (--connections 2 over 2 workers): a worker busy
with one message leaves the next to the other.
"""

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import QQFILTER, Resident, assert_clean_failure, envelope
from test_metrics import scrape, value

ENV = envelope(b"alice@example.com", b"bob@example.org")
PLAIN = b"Subject: hi\n\nhello\n"


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a server's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (not gone, not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def eventually(condition, seconds: float = 5.0) -> bool:
    give_up = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


def through(qq, server, **env: str):
    """Submit PLAIN through ``server``; a failure to reach it is 71, not in-process work."""
    settings = {"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail", **env}
    return qq.submit(PLAIN, ENV, env=settings)


def in_background(function) -> dict:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(out=function()))
    thread.start()
    result["thread"] = thread
    return result


@pytest.fixture
def recorder(tmp_path):
    """A QHPSI scanner that writes down the pid of the worker running it, then takes 1.5 s
    to say clean; ``recorder.pids()`` reads them back."""

    class Recorder:
        record = tmp_path / "scanned-by"
        program = tmp_path / "recording-scanner"

        def pids(self) -> list[int]:
            if not self.record.exists():
                return []
            return [int(line) for line in self.record.read_text().split()]

    recorder = Recorder()
    recorder.program.write_text(f"#!/bin/sh\necho $PPID >> {recorder.record}\nsleep 1.5\nexit 0\n")
    recorder.program.chmod(0o755)
    return recorder


def serving(tmp_path, name: str, *args: str) -> Resident:
    (tmp_path / name).mkdir()
    return Resident(tmp_path / name, *args)


def test_each_worker_is_a_child_and_takes_messages(qq, tmp_path, recorder):
    server = serving(tmp_path, "two", "--workers", "2", "--connections", "2")
    try:
        workers = children(server.process.pid)
        assert len(workers) == 2
        assert f"serving on {server.socket} with 2 workers (ready in " in server.log.read_text()
        both = [
            in_background(lambda: through(qq, server, QHPSI=str(recorder.program)))
            for _ in range(2)
        ]
        for busy in both:
            busy["thread"].join(10)
            assert busy["out"].returncode == 0, busy["out"].stderr
        assert sorted(recorder.pids()) == workers  # one message each
        assert children(server.process.pid) == workers
    finally:
        server.stop()


def test_a_killed_worker_is_replaced_and_mail_still_flows(qq, tmp_path):
    server = serving(tmp_path, "two", "--workers", "2")
    try:
        first, other = children(server.process.pid)
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: len(children(server.process.pid)) == 2 and not running(first))
        now = children(server.process.pid)
        assert other in now and first not in now
        log = server.log.read_text()
        assert f"worker {first} was killed by signal 9 (SIGKILL) " in log, log
        assert "starting another" in log
        for _ in range(4):
            out = through(qq, server)
            assert out.returncode == 0, out.stderr
            assert out.queued
    finally:
        server.stop()
    assert server.process.returncode == 0


def test_workers_that_die_as_they_start_make_the_parent_give_up(tmp_path):
    """The test hook QQF_TEST_WORKEREXIT: every worker exits with status 3 as it starts. The
    parent replaces them a second apart, and gives up at the fifth: exit status 1, the socket
    removed (clients work in-process meanwhile), and never a "serving on"."""
    path = tmp_path / "s.sock"
    started = time.monotonic()
    out = subprocess.run(
        [QQFILTER, "serve", "--socket", str(path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QQF_TEST_WORKEREXIT": "3"},
    )
    took = time.monotonic() - started
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    gave_up = lines.index(
        "qqfilter serve: giving up: 5 workers in a row ended within 5 s of their start"
    )
    deaths = [line for line in lines if "exited with status 3 0.0 s after its start" in line]
    assert len(deaths) == 5, out.stderr
    assert "starting another in 1 s (4 in a row so quickly; at 5 the server gives up)" in deaths[3]
    assert deaths[4].endswith("after its start")  # and no other
    assert gave_up > lines.index(deaths[4])
    # the one started with the fifth, had it not died yet, is stopped
    others = [line for line in lines if line not in deaths and line != lines[gave_up]]
    assert all("while stopping" in line for line in others), out.stderr
    assert "serving on" not in out.stderr and "Traceback" not in out.stderr
    assert 1.5 < took < 10
    assert not path.exists()
    assert not Path(f"{path}.metrics").exists()


def test_sighup_reaches_every_worker(qq, tmp_path):
    server = serving(tmp_path, "two", "--workers", "2")
    try:
        workers = children(server.process.pid)
        server.process.send_signal(signal.SIGHUP)
        said = [f"worker {pid}: SIGHUP: DNS cache emptied" for pid in workers]
        assert eventually(lambda: all(words in server.log.read_text() for words in said))
        assert children(server.process.pid) == workers  # emptied, not restarted
        assert through(qq, server).returncode == 0
    finally:
        server.stop()


def test_sigterm_lets_the_message_in_work_finish_and_leaves_no_process(qq, tmp_path, recorder):
    server = serving(tmp_path, "two", "--workers", "2")
    workers = children(server.process.pid)
    busy = in_background(lambda: through(qq, server, QHPSI=str(recorder.program)))
    assert eventually(recorder.pids)  # the message is under the checks
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    busy["thread"].join(10)
    assert server.process.wait(10) == 0
    assert 1 < time.monotonic() - started < 5  # the scanner's time, then the end
    out = busy["out"]
    assert out.returncode == 0, out.stderr
    assert out.message == PLAIN
    assert not any(running(pid) for pid in workers)
    assert not os.path.exists(server.socket)
    log = server.log.read_text()
    assert log.splitlines()[-1] == "qqfilter serve: stopped"
    assert "Traceback" not in log


def test_sigkill_of_the_parent_leaves_no_worker_serving(qq, tmp_path):
    server = serving(tmp_path, "two", "--workers", "2")
    workers = children(server.process.pid)
    assert len(workers) == 2
    server.process.kill()
    server.process.wait(10)
    assert eventually(lambda: not any(running(pid) for pid in workers), 1.0)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe,
        pytest.raises(ConnectionRefusedError),
    ):
        probe.connect(server.socket)  # the socket is left behind; nobody answers there
    out = through(qq, server)
    assert_clean_failure(out, 71)  # no fallback asked: 71, and nothing queued


@pytest.mark.parametrize("count", ["0", "abc", "257"])
def test_a_worker_count_that_is_no_count_is_a_usage_error(tmp_path, count):
    path = tmp_path / "s.sock"
    out = subprocess.run(
        [QQFILTER, "serve", "--socket", str(path), "--workers", count],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert f"argument --workers: '{count}': " in out.stderr
    assert out.stderr.splitlines()[-1].startswith("qqfilter serve: error: argument --workers")
    assert "Traceback" not in out.stderr
    assert not path.exists()


def test_a_metrics_directory_that_is_not_the_servers_is_left_alone(tmp_path):
    """The workers' files go beside the socket, in SOCKET.metrics: a file of that name (or a
    directory of another user's) is one line and exit status 2, and kept as it was."""
    path = tmp_path / "s.sock"
    taken = tmp_path / "s.sock.metrics"
    taken.write_text("keep me\n")
    out = subprocess.run(
        [QQFILTER, "serve", "--socket", str(path), "--workers", "2", "--metrics", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr == (
        f"qqfilter serve: {taken}: exists and is not a directory of this user's; not using it\n"
    )
    assert taken.read_text() == "keep me\n"
    assert not path.exists()


def test_the_metrics_are_the_sum_over_the_workers(qq, tmp_path, recorder):
    """Two messages at once, one in each worker: the page counts both; a worker killed with a
    message in hand is replaced, its counts stay, and what it held is forgotten."""
    server = serving(
        tmp_path, "two", "--workers", "2", "--connections", "2", "--metrics", "127.0.0.1:0"
    )
    url = server.log.read_text().split("metrics on ")[1].split()[0]
    scanner = str(recorder.program)
    try:
        workers = children(server.process.pid)
        both = [in_background(lambda: through(qq, server, QHPSI=scanner)) for _ in range(2)]
        assert eventually(lambda: len(recorder.pids()) == 2)
        during = scrape(url)
        for busy in both:
            busy["thread"].join(10)
            assert busy["out"].returncode == 0, busy["out"].stderr
        assert sorted(recorder.pids()) == workers
        refused = through(qq, server, QQF_MAXSIZE="5")
        assert refused.returncode == 31, refused.stderr
        after = scrape(url)

        assert value(during, "qqfilter_messages_in_flight") == 2
        assert value(during, "qqfilter_messages_checking") == 2
        messages = "qqfilter_messages_total"
        assert value(after, messages, verdict="accept", check="", tag="") == 2
        size = {"check": "size", "tag": "Reject::DATA::Invalid_Size"}
        assert value(after, messages, verdict="reject", **size) == 1
        assert value(after, "qqfilter_exit_codes_total", code="0") == 2
        assert value(after, "qqfilter_check_seconds_count", check="size") == 3
        assert value(after, "qqfilter_check_seconds_bucket", check="qhpsi", le="1.0") == 0
        assert value(after, "qqfilter_check_seconds_bucket", check="qhpsi", le="2.5") == 2
        assert value(after, "qqfilter_messages_in_flight") == 0
        assert value(after, "qqfilter_limit_messages") == 16
        assert value(after, "qqfilter_limit_connections") == 2
        assert value(after, "qqfilter_info", version=qqfilter_version()) == 1
        # the process figures are the parent's and the workers' together
        assert value(after, "process_open_fds") > 3 * 3
        assert value(after, "process_resident_memory_bytes") > 0

        # a worker killed with a message in hand (still arriving): its client gets 71, the
        # worker is replaced, what it held is forgotten, its counts stay
        stderr = killed_mid_message(qq, server, url)
        assert "resident server ended without an answer" in stderr
        assert eventually(lambda: len(children(server.process.pid)) == 2)
        gone = scrape(url)
        assert value(gone, "qqfilter_messages_in_flight") == 0
        assert value(gone, "qqfilter_messages_checking") == 0
        assert value(gone, messages, verdict="accept", check="", tag="") == 2
        assert value(gone, "process_cpu_seconds_total") >= value(after, "process_cpu_seconds_total")
    finally:
        server.stop()
    assert not Path(f"{server.socket}.metrics").exists()  # the workers' files: removed


def killed_mid_message(qq, server, url: str) -> str:
    """Start a message that never finishes arriving, kill the worker that holds it (the one
    with the client's fd 0 among its descriptors); the client's log line."""
    env_read, env_write = os.pipe()
    client = subprocess.Popen(
        [QQFILTER],
        stdin=subprocess.PIPE,
        stdout=env_read,
        stderr=subprocess.PIPE,
        env={**qq.env, "QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail"},
    )
    os.close(env_read)
    try:
        client.stdin.write(PLAIN[:8])
        client.stdin.flush()
        pipe = f"pipe:[{os.fstat(client.stdin.fileno()).st_ino}]"

        def holder() -> int | None:
            for pid in children(server.process.pid):
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == pipe:
                            return pid
            return None

        assert eventually(lambda: holder() is not None)
        assert value(scrape(url), "qqfilter_messages_in_flight") == 1
        os.kill(holder(), signal.SIGKILL)
        stderr = client.stderr.read().decode()
        assert client.wait(10) == 71, stderr
        return stderr
    finally:
        client.stdin.close()
        os.close(env_write)


def qqfilter_version() -> str:
    from qqfilter import __version__

    return __version__

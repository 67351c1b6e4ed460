"""The compiled client (qqfilter/resident/client.c) against the Python one, its reference.

The fixtures here build it once per run, as an administrator does (``install-wrapper`` then
``install-client``, into a scratch directory), and give the contract tests of the Python
client both clients to run (``client``: test_resident.py, test_resident_hardening.py,
test_contract.py import it). Here: what only the compiled client has or must show itself -
the request's bytes are wire.pack_request's, the answer is read within wire.unpack_answer's
bounds (a fuzz test of a build with AddressSanitizer and UBSan against a fake server), the
ECONNRESET in front of an answer, QQF_SOCKETTIMEOUT read as Python reads it, the fallback
through the Python wrapper, commands and the service through the binary, and install-client.
"""

import array
import contextlib
import os
import pwd
import re
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import QQFILTER, Harness, envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qqfilter.resident import client as reference
from qqfilter.resident import wire
from qqfilter.tools import setup

ENV = envelope(b"alice@example.com", b"bob@example.org")
PLAIN = b"Subject: hi\n\nhello\n"
ME = pwd.getpwuid(os.geteuid()).pw_name
EXAMPLES = int(os.environ.get("QQF_FUZZ_EXAMPLES", "0"))
_BUILT: dict[str, str] = {}
"""What is built once per run, whichever module's fixture asks first."""


def _build(tmp_path_factory) -> str:
    if "client" not in _BUILT:
        if setup.compiler() is None:
            pytest.skip("no C compiler (cc): install.sh --dev installs build-essential")
        where = tmp_path_factory.mktemp("compiled")
        for command in (
            ["install-wrapper", "--user", ME, str(where / "qqfilter")],
            ["install-client", "--user", ME, "--wrapper", str(where / "qqfilter")],
        ):
            if command[0] == "install-client":
                command.append(str(where / "qqfilter-queue"))
            done = subprocess.run([QQFILTER, *command], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        _BUILT["client"] = str(where / "qqfilter-queue")
    return _BUILT["client"]


@pytest.fixture(scope="session", name="compiled")
def compiled_fixture(tmp_path_factory) -> str:
    """The compiled client, for a wrapper of this installation."""
    return _build(tmp_path_factory)


@pytest.fixture(params=["python", "compiled"], name="client")
def client_fixture(request) -> list[str]:
    """The QMAILQUEUE program's command: the Python client (this venv's qqfilter) or the
    compiled one (it execs the Python wrapper for one-shot work and its own failures)."""
    if request.param == "python":
        return [QQFILTER]
    return [request.getfixturevalue("compiled")]


# --- a fake server: answers of the test's choosing ------------------------------------------


class Fake:
    """A SOCK_SEQPACKET listener answering every connection with ``answer`` and ``fds``
    attached, after ``pause`` seconds; with ``unread``, it closes leaving the request unread
    (as the real server does to a peer it refuses). ``requests`` are what it read. ``close``
    waits for its threads: none outlives it to answer with descriptors closed since."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "fake.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.path)
        self.listener.listen(64)
        self.listener.settimeout(0.05)
        self.answer = b""
        self.fds: list[int] = []
        self.pause = 0.0
        self.unread = False
        self.requests: list[bytes] = []
        self.closed = False
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            serving = threading.Thread(target=self._serve, args=(connection,))
            serving.start()
            self.threads.append(serving)

    def _serve(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.settimeout(10)
            if self.unread:
                socket.socket.recv(connection, 1, socket.MSG_PEEK)  # there, left unread
            else:
                data, ancillary, _, _ = connection.recvmsg(1 << 20, socket.CMSG_SPACE(8))
                for fd in wire.descriptors(ancillary):
                    os.close(fd)
                self.requests.append(data)
            time.sleep(self.pause)
            rights = array.array("i", self.fds).tobytes()
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if self.fds else []
            connection.sendmsg([self.answer], ancillary)

    def close(self) -> None:
        self.closed = True
        self.threads[0].join(30)  # no new connection after it
        for thread in self.threads:
            thread.join(30)
        self.listener.close()


@pytest.fixture
def fake(tmp_path):
    server = Fake(tmp_path)
    yield server
    server.close()


def answer(kind: bytes, code: int, errfd: int, program: bytes, line: bytes, reply: bytes) -> bytes:
    return b"\0".join([wire.MAGIC, kind, b"%d" % code, b"%d" % errfd, program, line, reply])


def run(command: list[str], tmp: Path, env: dict[str, str], **popen) -> subprocess.CompletedProcess:
    """One message from files (fd 0 all there: the deadline starts at once)."""
    message, env_file = tmp / "m", tmp / "m.env"
    message.write_bytes(PLAIN)
    env_file.write_bytes(ENV)
    with open(message, "rb") as stdin, open(env_file, "rb") as stdout:
        return subprocess.run(
            command,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
            **popen,
        )


# --- what both clients do with the same answers ---------------------------------------------


def test_an_answer_behind_a_reset_is_read_and_carried_out(client, fake, tmp_path):
    """The server answered and closed with the request unread: ECONNRESET, then the answer."""
    fake.unread = True
    fake.answer = answer(wire.EXIT, 31, 0, b"", b"qqfilter: the line", b"")
    out = run(client, tmp_path, {"QQF_SOCKET": fake.path, "QQF_SOCKETFALLBACK": "tempfail"})
    assert out.returncode == 31, out.stderr
    assert out.stderr == b"qqfilter: the line\n"


def test_a_reply_goes_only_to_a_pipe_the_request_named(client, fake, tmp_path):
    env = {"QQF_SOCKET": fake.path}
    read_end, write_end = os.pipe()
    try:
        for errfd, written in ((6, b"Dno (#5.7.1)"), (2, b""), (4, b"")):
            fake.answer = answer(wire.EXIT, 82, errfd, b"", b"qqfilter: refused", b"Dno (#5.7.1)")
            out = run(
                client,
                tmp_path,
                env,
                pass_fds=(6,),
                preexec_fn=lambda: os.dup2(write_end, 6),
            )
            assert out.returncode == 82
            assert out.stderr == b"qqfilter: refused\n"  # never the reply on stderr
            os.set_blocking(read_end, False)
            try:
                got = os.read(read_end, 100)
            except BlockingIOError:
                got = b""
            assert got == written
    finally:
        os.close(read_end)
        os.close(write_end)
    assert fake.requests[0].split(b"\0")[2] == b"6"  # the pipe the request named


def test_a_refusal_with_a_custom_reply_on_fd_6(client, resident_server, tmp_path):
    """The real server refuses (QQF_MAXSIZE) with 82 and the reply text on fd 6."""
    harness = Harness(tmp_path)
    read_end, write_end = os.pipe()
    env = {"QQF_SOCKET": resident_server.socket, "QQF_MAXSIZE": "5", "QQF_ERRFD": "6"}
    try:
        out = harness.submit(
            PLAIN,
            ENV,
            env={**env, "QQF_SOCKETFALLBACK": "tempfail"},
            pass_fds=(6, write_end),
            preexec_fn=lambda: os.dup2(write_end, 6),
            command=client,
        )
    finally:
        os.close(write_end)
    reply = os.read(read_end, 1024)
    os.close(read_end)
    assert out.returncode == 82, out.stderr
    assert reply == b"Dmessage is 19 bytes, over the limit of 5 (#5.3.4)"
    assert out.field("verdict") == "reject"
    assert not out.queued


# --- what only the compiled client must show ------------------------------------------------


def test_the_request_is_wire_pack_requests_bytes(compiled, fake, tmp_path):
    fake.answer = answer(wire.EXIT, 0, 0, b"", b"qqfilter: fine", b"")
    env = {"QQF_SOCKET": fake.path, "TCPREMOTEIP": "192.0.2.7", "EMPTY": "", "ODD": "a=b=\xe9"}
    read_end, write_end = os.pipe()
    with open(os.devnull, "wb") as file:  # fd 4: a file, not a pipe: not named
        out = run(
            [compiled],
            tmp_path,
            env,
            pass_fds=(4, 6),
            preexec_fn=lambda: (os.dup2(file.fileno(), 4), os.dup2(write_end, 6)),
        )
    os.close(read_end)
    os.close(write_end)
    assert out.returncode == 0, out.stderr
    (request,) = fake.requests
    pid = int(request.split(b"\0")[1])
    assert request == wire.pack_request(pid, [6], env)


def test_qqf_sockettimeout_is_read_as_python_reads_it(compiled, fake, tmp_path):
    """The server answers after 0.4 s: a timeout Python reads as 0.1 s is 71, one it reads
    as 300 s (not a number, out of bounds) gets the answer. All at once."""
    fake.pause = 0.4
    fake.answer = answer(wire.EXIT, 31, 0, b"", b"qqfilter: answered", b"")
    values = [
        *("0.1", " 0.1\t", ".1", "1e-1", "+.1e+0", "0.0_1e1", "1_0e-2", "1.e-1"),
        *("0x0.1p0", "0_.1", "_0.1", "0.1_", "1__0e-2", "-0.1", "nan", "inf", "infinity"),
        *("0", "1e-400", "0.1s", "", "1e", "e-1", ".", "1e5", "0.1 0"),
    ]
    outcomes: dict[str, int] = {}

    def one(value: str, where: Path) -> None:
        where.mkdir()
        environ = {"QQF_SOCKET": fake.path, "QQF_SOCKETTIMEOUT": value}
        outcomes[value] = run([compiled], where, environ).returncode

    threads = [
        threading.Thread(target=one, args=(value, tmp_path / str(i)))
        for i, value in enumerate(values)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    expected = {v: 71 if reference._seconds(v) < 0.4 else 31 for v in values}
    assert outcomes == expected


def test_without_the_wrapper_it_says_so_itself_and_tempfails(tmp_path):
    if setup.compiler() is None:
        pytest.skip("no C compiler (cc)")
    binary = str(tmp_path / "qqfilter-queue")
    setup.compile_client(binary, "/nonexistent/qqfilter")
    out = run([binary], tmp_path, {"TCPREMOTEIP": "192.0.2.7"})
    assert out.returncode == 71
    (line,) = out.stderr.decode().splitlines()
    fields = dict(part.split("=", 1) for part in shlex.split(line)[1:])
    assert fields == {
        "pid": fields["pid"],
        "verdict": "tempfail",
        "code": "71",
        "reason": "the compiled client cannot run the Python wrapper /nonexistent/qqfilter: "
        "No such file or directory",
        "ip": "192.0.2.7",
    }


def test_its_own_failures_are_the_python_clients_lines(compiled, fake, tmp_path):
    """The same lines, field for field but the pid, whichever client failed: the server
    unreachable, answers that make no sense, qmail-queue that cannot be run."""
    unreachable = {"QQF_SOCKET": str(tmp_path / "none.sock"), "QQF_SOCKETFALLBACK": "tempfail"}
    missing = answer(wire.EXEC, 0, 0, b"/nonexistent/qmail-queue", b"qqfilter: accept", b"")
    cases = [
        (unreachable, b"", 1),
        ({"QQF_SOCKET": fake.path}, b"QQF1\0exit\0" + b"1" * 11 + b"\0\0\0line\0", 1),
        ({"QQF_SOCKET": fake.path}, b"QQF2\0exit\x000\x000\0\0line\0", 1),
        ({"QQF_SOCKET": fake.path, "QQF_LOG": "json"}, b"QQF1\0exit", 1),
        ({"QQF_SOCKET": fake.path}, missing, 2),
    ]
    fake.fds = [os.memfd_create("message"), os.memfd_create("envelope")]
    try:
        for env, packet, count in cases:
            fake.answer = packet
            env = {**env, "TCPREMOTEIP": "192.0.2.7"}
            python, ours = (
                re.sub(rb"pid\W+\d+", b"pid", run(c, tmp_path, env).stderr)
                for c in ([QQFILTER], [compiled])
            )
            assert ours == python
            assert python.count(b"\n") == count and b"verdict" in python, python
    finally:
        for fd in fake.fds:
            os.close(fd)


def test_commands_and_the_service_run_through_it(compiled, tmp_path):
    """``qqfilter-queue serve`` is the server (setup's --program names the binary), and
    ``--version`` is the wrapper's; a message from a file (not a pipe) goes through."""
    versions = [subprocess.run([c, "--version"], capture_output=True) for c in (compiled, QQFILTER)]
    assert versions[0].stdout == versions[1].stdout != b""
    path = str(tmp_path / "qqfilter.sock")
    log = tmp_path / "serve.log"
    with open(log, "wb") as said:
        server = subprocess.Popen(
            [compiled, "serve", "--socket", path],
            stderr=said,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    try:
        give_up = time.monotonic() + 30
        while "serving on" not in log.read_text() and time.monotonic() < give_up:
            time.sleep(0.02)
        harness = Harness(tmp_path)
        env = {**harness.env, "QQF_SOCKET": path, "QQF_SOCKETFALLBACK": "tempfail"}
        out = run([compiled], tmp_path, env)
        assert out.returncode == 0, out.stderr
        assert (harness.record / "message").read_bytes() == PLAIN
        assert b"verdict=accept" in out.stderr
    finally:
        server.terminate()
        server.wait(30)
    parts = setup._wrapper_parts(compiled)
    wrapper = str(Path(compiled).with_name("qqfilter"))
    assert ("the wrapper", wrapper) in parts
    assert any(what == "the interpreter" for what, _ in parts)


def test_install_client_without_a_compiler_or_a_wrapper_is_one_line(compiled, tmp_path):
    target = tmp_path / "qqfilter-queue"
    target.write_text("the old one\n")
    wrapper = str(Path(compiled).with_name("qqfilter"))
    for env, options, words in (
        ({"CC": "/nonexistent/cc"}, ["--wrapper", wrapper], "no C compiler (/nonexistent/cc)"),
        ({}, ["--wrapper", str(tmp_path / "none")], f"no program {tmp_path / 'none'}: write it"),
        ({}, ["--wrapper", compiled], f"--wrapper {compiled} is not the script"),
    ):
        out = subprocess.run(
            [QQFILTER, "install-client", "--user", ME, *options, str(target)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        assert out.returncode in (1, 2), out.stderr
        assert out.stderr.count("\n") == 1 and words in out.stderr, out.stderr
        assert target.read_text() == "the old one\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qqfilter-queue"]


# --- the answer parser under AddressSanitizer and UBSan -------------------------------------


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory) -> str:
    """The client built with -fsanitize=address,undefined, for a stand-in wrapper that says
    which failure it was told (QQF_CLIENTFAILED) in one line, and exits 71."""
    if setup.compiler() is None:
        pytest.skip("no C compiler (cc)")
    where = tmp_path_factory.mktemp("sanitized")
    probe = where / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    flags = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g")
    command = [*setup.compiler(), *flags, "-o", str(where / "probe"), str(probe)]
    tried = subprocess.run(command, capture_output=True)
    if tried.returncode != 0:
        pytest.skip("the C compiler has no libasan/libubsan (gcc's, in build-essential)")
    standin = where / "wrapper"
    standin.write_text(
        '#!/bin/sh\necho "qqfilter: stand-in state=$QQF_CLIENTFAILED" >&2\nexit 71\n'
    )
    standin.chmod(0o755)
    setup.compile_client(str(where / "client"), str(standin), flags)
    return str(where / "client")


def expected(packet: bytes, passed: int, program_runs: dict[bytes, int]) -> tuple[int, bytes]:
    """What the reference makes of ``packet`` (read as the Python client reads it: its first
    MAX_ANSWER bytes, at most two descriptors): the exit status and what stderr gets."""
    try:
        parsed = wire.unpack_answer(packet[: wire.MAX_ANSWER])
    except ValueError as exc:
        state = "ended" if "ended" in str(exc) else "nonsense"
        return 71, f"qqfilter: stand-in state={state}\n".encode()
    line = parsed.line + b"\n"
    if parsed.kind == wire.EXEC and min(passed, 2) == 2:
        program = os.fsencode(parsed.program)
        if program in program_runs:
            return program_runs[program], line
        failed = b"qqfilter: stand-in state=exec:2:" + program + b"\n"  # ENOENT
        return 71, line + failed
    return parsed.code & 0xFF, line


def carry(binary: str, fake: Fake, tmp: Path, packet: bytes, passed: int) -> None:
    """Run the sanitized client on ``packet`` with ``passed`` descriptors; it must do what
    the reference does, and the sanitizers must have nothing to say."""
    fake.answer = packet
    fake.fds = [fake.message, fake.envelope, fake.envelope][:passed]
    out = run(
        [binary],
        tmp,
        {
            "QQF_SOCKET": fake.path,
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
            "UBSAN_OPTIONS": "print_stacktrace=1",
        },
    )
    text = out.stderr.decode("ascii", "replace")
    assert "Sanitizer" not in text and "runtime error" not in text, text
    code, stderr = expected(packet, passed, {b"/bin/true": 0, b"/bin/false": 1})
    assert (out.returncode, out.stderr) == (code, stderr), packet[:200]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    server = Fake(tmp_path_factory.mktemp("fuzz"))
    server.message = os.memfd_create("message")  # type: ignore[attr-defined]
    server.envelope = os.memfd_create("envelope")  # type: ignore[attr-defined]
    yield server
    server.close()


def test_the_answer_parser_holds_against_every_shape_of_answer(sanitized, fuzz_server, tmp_path):
    good = answer(wire.EXIT, 31, 0, b"", b"qqfilter: refused", b"")
    shapes = [
        (b"", 0),  # the server's end, no answer
        (b"Q", 0),
        (b"QQF1", 0),
        (b"QQF1\0exit\x0031\x000\0\0line", 0),  # six fields: a NUL missing
        (good.replace(b"QQF1", b"QQF2"), 0),  # wrong magic
        (good.replace(b"exit", b"EXIT"), 0),
        (answer(wire.EXIT, 10**10, 0, b"", b"line", b""), 0),  # 11 digits
        (answer(wire.EXIT, 0, 10**10, b"", b"line", b""), 0),
        (answer(wire.EXIT, 9999999999, 9999999999, b"", b"line", b"Dx"), 0),  # 10: the most
        (b"QQF1\0exit\0-1\x000\0\0line\0", 0),
        (b"QQF1\0exit\0 1\x000\0\0line\0", 0),
        (b"QQF1\0exit\0\x000\0\0line\0", 0),
        (answer(wire.EXIT, 256 + 31, 0, b"", b"line", b""), 0),
        (good + b"\0more\0fields", 0),  # the reply holds NULs
        (good + b"D" * 100_000, 0),  # oversized: its first 64 KB
        (b"x" * 100_000, 0),
        (answer(wire.EXIT, 82, 4, b"", b"line", b"Dno"), 0),  # errfd: not a pipe here
        (answer(wire.EXIT, 82, 2, b"", b"line", b"Dno"), 0),  # stderr: never the reply
        *((answer(wire.EXEC, 0, 0, b"/bin/false", b"line", b""), n) for n in (0, 1, 2, 3)),
        (answer(wire.EXEC, 0, 0, b"/nonexistent/qmail-queue", b"line", b""), 2),
        (answer(wire.EXEC, 0, 0, b"", b"line", b""), 2),
        (answer(wire.EXIT, 0, 0, b"", b"", b""), 2),  # exit with descriptors: closed
    ]
    for packet, passed in shapes:
        carry(sanitized, fuzz_server, tmp_path, packet, passed)


NUMBERS = st.one_of(
    st.integers(0, 10**12).map(lambda n: b"%d" % n),
    st.binary(max_size=12),
)
FIELDS = st.tuples(
    st.sampled_from([wire.MAGIC, b"QQF", b"QQF1 ", b""]),
    st.sampled_from([wire.EXEC, wire.EXIT, b"", b"exe"]),
    NUMBERS,
    NUMBERS,
    st.sampled_from([b"/bin/true", b"/bin/false", b"/nonexistent", b""]),
    st.binary(max_size=200).map(lambda b: b.replace(b"\0", b"").replace(b"\n", b"")),
    st.binary(max_size=300),
)


@settings(
    max_examples=EXAMPLES or 120,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    packet=st.one_of(
        st.binary(max_size=400),
        FIELDS.map(lambda fields: b"\0".join(fields)),
        st.tuples(FIELDS, st.integers(1, 6)).map(
            lambda pair: b"\0".join(pair[0][: pair[1]]) + b"x".join(pair[0][pair[1] :])
        ),
    ),
    passed=st.integers(0, 3),
)
def test_the_answer_parser_fuzzed(sanitized, fuzz_server, tmp_path, packet, passed):
    carry(sanitized, fuzz_server, tmp_path, packet, passed)

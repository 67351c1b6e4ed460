"""install.sh and what it writes: a venv qmail's user can run, a qmail wrapper that really works
as QMAILQUEUE (for that user, and for an editable install too), the compiled client when there
is a C compiler, the resident server's service (daemontools and systemd), and the WarLord
samples a wheel user copies.

As root, the tests make a throw-away system user to stand for qmaild and run things as it, and
an interpreter under a 0700 directory (a copy of the system's python3, as a pyenv build under
/root is on many hosts); without root, those tests are skipped and the rest run as ourselves.
Everything lives in one directory every user can enter (pytest's own are 0700).
"""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, Harness, envelope

MESSAGE = b"Subject: via the wrapper\n\nhello\n"
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: makes a throw-away user to stand for qmaild"
)
SYSTEM_PYTHON = "/usr/bin/python3"


def _system_python_fits() -> bool:
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import sys, ensurepip; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True,
            timeout=30,
        )
    except OSError:
        return False
    return proc.returncode == 0


@dataclass
class World:
    top: Path  # every user may enter it
    user: pwd.struct_passwd  # qmaild's stand-in (ourselves without root)
    closed_python: Path | None  # a python3 under a 0700 directory (root only)

    def run_as_user(self):
        """A preexec_fn: the user's uid and own group only, as tcpserver runs qmail-smtpd."""
        uid, gid = self.user.pw_uid, self.user.pw_gid
        if uid == os.geteuid():
            return None

        def switch() -> None:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

        return switch


@pytest.fixture(scope="module")
def world():
    top = Path(tempfile.mkdtemp(prefix="qqf-install-"))
    top.chmod(0o755)
    made = None
    closed_python = None
    if os.geteuid() == 0:
        made = f"qqft{os.getpid()}"
        subprocess.run(
            [
                *("useradd", "--system", "--user-group", "--no-create-home"),
                *("--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", made),
            ],
            check=True,
            timeout=60,
        )
        if _system_python_fits():
            closed = top / "closed"
            (closed / "bin").mkdir(parents=True)
            closed.chmod(0o700)
            closed_python = closed / "bin" / "python3"
            shutil.copy2(os.path.realpath(SYSTEM_PYTHON), closed_python)
    user = pwd.getpwnam(made) if made else pwd.getpwuid(os.geteuid())
    yield World(top, user, closed_python)
    if made:
        subprocess.run(["userdel", made], timeout=60, check=False)
    shutil.rmtree(top, ignore_errors=True)


@dataclass
class Installed:
    venv: Path
    wrapper: Path
    first: subprocess.CompletedProcess  # install.sh --qmail over a venv from a bad interpreter,
    # without a C compiler
    again: subprocess.CompletedProcess  # without --qmail, over a wrapper of another install
    resident: subprocess.CompletedProcess  # --qmail --resident


def _install(world: World, *options: str, env: dict[str, str] | None = None):
    """install.sh as qmail's user's admin runs it; ``env`` over ours, without PYTHON."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHON"}, **(env or {})}
    return subprocess.run(
        [str(ROOT / "install.sh"), "--user", world.user.pw_name, *options],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def installed(world) -> Installed:
    """install.sh run three times into a fresh qmail home: --qmail without a C compiler; again
    without --qmail, over a wrapper that names another install's directories (an editable
    install's, say); --qmail --resident, which builds the compiled client.

    As root, the venv there first is one made from an interpreter qmail's user cannot run,
    and the first python3 on the PATH is that interpreter: install.sh must choose the system's
    python3 and make the venv again."""
    top = world.top
    (top / "qmail" / "bin").mkdir(parents=True)
    (top / "service").mkdir()
    venv = top / "venv"
    wrapper = top / "qmail" / "bin" / "qqfilter"
    env = {}
    if world.closed_python:
        subprocess.run(
            [str(world.closed_python), "-m", "venv", "--without-pip", str(venv)],
            check=True,
            timeout=60,
        )
        env["PATH"] = f"{world.closed_python.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    where = ["--venv", str(venv), "--qmailhome", str(top / "qmail")]
    first = _install(world, "--qmail", *where, env={**env, "CC": "/nonexistent/cc"})
    assert first.returncode == 0, first.stderr
    text = wrapper.read_text()
    wrapper.write_text(text.replace("PATHS = [", "PATHS = ['/the/source/of/an/editable/install', "))
    again = _install(world, *where, env=env)
    assert again.returncode == 0, again.stderr
    assert wrapper.read_text() == text
    options = ["--resident", "--log-user", world.user.pw_name, "--svscan", str(top / "service")]
    resident = _install(world, "--qmail", *where, *options, env=env)
    assert resident.returncode == 0, resident.stderr
    return Installed(venv, wrapper, first, again, resident)


def test_wrapper_calls_the_venv_interpreter_without_site(installed):
    wrapper = installed.wrapper
    assert wrapper.stat().st_mode & 0o777 == 0o755
    assert wrapper.read_text().splitlines()[0] == f"#!{installed.venv}/bin/python3 -IS"
    # no temporary file left; the compiled client beside it, with a C compiler
    assert {p.name for p in wrapper.parent.iterdir()} <= {"qqfilter", "qqfilter-queue"}
    assert f':allow,QMAILQUEUE="{wrapper}"' in installed.first.stdout


def test_wrapper_works_as_the_qmailqueue_program(installed, tmp_path):
    harness = Harness(tmp_path)
    env = envelope(b"a@example.com", b"b@example.org")
    out = harness.submit(MESSAGE, env, command=[str(installed.wrapper)])
    assert out.returncode == 0, out.stderr
    assert (out.message, out.envelope) == (MESSAGE, env)
    assert harness.spool_is_empty()


def test_wrapper_without_the_package_is_81_and_one_line(installed, tmp_path):
    broken = tmp_path / "qqfilter"
    lines = installed.wrapper.read_text().splitlines(keepends=True)
    (at,) = [i for i, line in enumerate(lines) if line.startswith("PATHS = ")]
    lines[at] = f"PATHS = [{str(tmp_path / 'nowhere')!r}]\n"
    broken.write_text("".join(lines))
    broken.chmod(0o755)
    proc = subprocess.run([str(broken)], input=MESSAGE, capture_output=True, timeout=30)
    assert proc.returncode == 81
    assert proc.stderr.decode().startswith("qqfilter: cannot load the qqfilter package from")
    assert len(proc.stderr.splitlines()) == 1
    assert b"Traceback" not in proc.stderr


def test_qmail_without_its_bin_directory_is_refused(tmp_path):
    proc = subprocess.run(
        [str(ROOT / "install.sh"), "--qmail", "--qmailhome", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert f"{tmp_path}/bin does not exist" in proc.stderr


def test_a_user_that_does_not_exist_is_refused(tmp_path):
    (tmp_path / "bin").mkdir()
    proc = subprocess.run(
        [str(ROOT / "install.sh"), "--qmail", "--qmailhome", str(tmp_path), "--user", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "install.sh: no user nosuch: name the user qmail-smtpd runs as with --user NAME\n"
    )


def test_unknown_option_is_a_usage_error():
    proc = subprocess.run(
        [str(ROOT / "install.sh"), "--frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr == "install.sh: unknown option: --frobnicate (--help)\n"


# --- qmail's user ---------------------------------------------------------------------------


@ROOT_ONLY
def test_a_python_qmails_user_cannot_run_is_replaced_and_the_venv_made_again(world, installed):
    if not world.closed_python:
        pytest.skip(f"{SYSTEM_PYTHON} is not a Python 3.11 with ensurepip to fall back on")
    name = world.user.pw_name
    said = installed.first.stderr
    assert f"install.sh: {name} cannot run {world.closed_python} ({world.top}/closed is " in said
    assert f"using {os.path.realpath(SYSTEM_PYTHON)} (PYTHON= names another)" in said
    assert f"install.sh: making {installed.venv} again: {name} cannot run its python3" in said
    assert "home = /usr/bin\n" in (installed.venv / "pyvenv.cfg").read_text()
    # later runs keep the repaired venv
    assert "making" not in installed.again.stderr + installed.resident.stderr


@ROOT_ONLY
def test_the_wrapper_works_as_qmails_user(world, installed, tmp_path):
    """The issue's host: qmaild could not exec the wrapper, so every message was 451."""
    here = world.top / "as-user"
    here.mkdir()
    harness = Harness(here)
    source = (ROOT / "tests" / "fake_qmail_queue.py").read_text().split("\n", 1)[1]
    harness.queue.write_text(f"#!{installed.venv}/bin/python3\n{source}")  # one it can run
    for directory in (harness.spool, harness.record):
        os.chown(directory, world.user.pw_uid, world.user.pw_gid)
    env = envelope(b"a@example.com", b"b@example.org")
    out = harness.submit(
        MESSAGE, env, command=[str(installed.wrapper)], preexec_fn=world.run_as_user()
    )
    assert out.returncode == 0, out.stderr
    assert (out.message, out.envelope) == (MESSAGE, env)


@ROOT_ONLY
def test_a_python_given_in_PYTHON_that_qmails_user_cannot_run_is_refused(world):
    if not world.closed_python:
        pytest.skip("no interpreter under a closed directory")
    venv = world.top / "never"
    proc = _install(
        world,
        "--qmail",
        "--venv",
        str(venv),
        "--qmailhome",
        str(world.top / "qmail"),
        env={"PYTHON": str(world.closed_python)},
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"install.sh: {world.user.pw_name} cannot run {world.closed_python} ({world.top}/closed"
        f" is closed to it): set PYTHON= to one it can run, e.g. /usr/bin/python3\n"
    )
    assert not venv.exists()


@ROOT_ONLY
def test_a_venv_where_qmails_user_cannot_enter_is_refused(world):
    if not world.closed_python:
        pytest.skip("no closed directory")
    proc = _install(
        world,
        "--qmail",
        "--venv",
        str(world.top / "closed" / "venv"),
        "--qmailhome",
        str(world.top / "qmail"),
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()[-1:]
    assert line.startswith(f"install.sh: {world.user.pw_name} cannot enter {world.top}/closed,")
    assert "--venv /opt/qqfilter" in line
    assert not (world.top / "closed" / "venv").exists()


@ROOT_ONLY
def test_a_wrapper_qmails_user_cannot_run_never_replaces_the_old_one(world, installed):
    closed_bin = world.top / "closed" / "bin"
    old = closed_bin / "qqfilter"
    old.write_text("the old wrapper\n")
    qqfilter = str(installed.venv / "bin" / "qqfilter")
    proc = subprocess.run(
        [qqfilter, "install-wrapper", "--user", world.user.pw_name, str(old)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"qqfilter install-wrapper: {world.user.pw_name} cannot run {old}: ")
    assert f"({world.top}/closed is closed to {world.user.pw_name}" in line
    assert line.endswith(f"; {old} left as it was")
    assert old.read_text() == "the old wrapper\n"
    assert sorted(p.name for p in closed_bin.iterdir()) == ["python3", "qqfilter"]


def test_install_wrapper_of_an_editable_install_puts_the_source_on_the_path(tmp_path):
    """``-S`` reads no .pth file, so an editable install's wrapper names the source itself
    (install.sh --dev --qmail: every message was 81 without it)."""
    dev = Path(sys.executable).with_name("qqfilter")  # this venv: ./install.sh --dev's
    where = "import os, qqfilter; print(os.path.dirname(os.path.dirname(qqfilter.__file__)))"
    found = subprocess.run([sys.executable, "-c", where], cwd="/", capture_output=True, text=True)
    source = Path(found.stdout.strip())  # the checkout, for an editable install
    wrapper = tmp_path / "qqfilter"
    proc = subprocess.run(
        [str(dev), "install-wrapper", "--user", pwd.getpwuid(os.geteuid()).pw_name, str(wrapper)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    paths_line = next(x for x in wrapper.read_text().splitlines() if x.startswith("PATHS = "))
    assert paths_line.startswith(f"PATHS = [{str(source)!r}, ")
    harness = Harness(tmp_path)
    env = envelope(b"a@example.com", b"b@example.org")
    out = harness.submit(MESSAGE, env, command=[str(wrapper)])
    assert out.returncode == 0, out.stderr
    assert out.queued
    if source == ROOT:  # an editable install: without the source, the wrapper was 81
        text = wrapper.read_text().replace(f"{str(source)!r}, ", "")
        wrapper.write_text(text)
        out = harness.submit(MESSAGE, env, command=[str(wrapper)])
        assert out.returncode == 81


# --- the WarLord samples --------------------------------------------------------------------


def test_samples_are_in_the_wheel_and_copied_once(installed, tmp_path):
    qqfilter = str(installed.venv / "bin" / "qqfilter")  # a wheel install, not editable
    names = ["badloadertypes", "badmimetypes"]
    for name in names:  # the package's copies are the documented ones
        assert (ROOT / "qqfilter" / "samples" / name).read_bytes() == (
            ROOT / "docs" / "control" / name
        ).read_bytes()
    proc = subprocess.run([qqfilter, "samples", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        copied = tmp_path / name
        assert copied.read_bytes() == (ROOT / "docs" / "control" / name).read_bytes()
        assert copied.stat().st_mode & 0o777 == 0o644
    (tmp_path / "badmimetypes").write_text("# mine\n")
    proc = subprocess.run([qqfilter, "samples", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0
    assert f"kept {tmp_path}/badmimetypes (it differs: --force replaces it)" in proc.stdout
    assert (tmp_path / "badmimetypes").read_text() == "# mine\n"
    proc = subprocess.run([qqfilter, "samples", str(tmp_path / "no")], capture_output=True)
    assert proc.returncode == 2
    assert proc.stderr.count(b"\n") == 1


# --- the resident server's services ---------------------------------------------------------


def _setup(installed: Installed, world: World, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *(str(installed.venv / "bin" / "qqfilter"), "setup", *options),
            *("--user", world.user.pw_name, "--program", str(installed.wrapper)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_resident_writes_and_links_the_daemontools_service(installed, world):
    service = world.top / "qmail" / "supervise" / "qqfilter"
    link = world.top / "service" / "qqfilter"
    assert link.is_symlink() and os.readlink(link) == str(service)
    for run in (service / "run", service / "log" / "run"):
        assert run.read_text().startswith("#!/bin/sh\n")
        assert run.stat().st_mode & 0o777 == 0o755
    client = installed.wrapper.with_name("qqfilter-queue")  # when there is a C compiler
    program = client if client.exists() else installed.wrapper
    rule = f':allow,QMAILQUEUE="{program}",QQF_SOCKET="/run/qqfilter/qqfilter.sock"'
    assert rule in installed.resident.stdout
    run_line = f"setuidgid {world.user.pw_name} {program} serve --socket"
    assert run_line in (service / "run").read_text()
    assert f"install.sh: linked {link}" in installed.resident.stdout


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler (install.sh --dev installs it)")
def test_the_compiled_client_is_built_with_a_compiler_and_said_missing_without(installed, tmp_path):
    """Without a compiler: one line, and QMAILQUEUE is the wrapper; with one, the binary,
    which works as QMAILQUEUE (one-shot through the wrapper here: no QQF_SOCKET)."""
    client = installed.wrapper.with_name("qqfilter-queue")
    said = [line for line in installed.first.stderr.splitlines() if "C compiler" in line]
    assert said == [
        "install.sh: no C compiler (/nonexistent/cc): QMAILQUEUE is the Python wrapper (~9 ms "
        "more CPU a message resident; apt-get install gcc, then run this again)"
    ]
    assert f"compiled client: {client} (for {installed.wrapper};" in installed.resident.stdout
    assert client.read_bytes().startswith(b"\x7fELF")
    assert client.stat().st_mode & 0o777 == 0o755
    harness = Harness(tmp_path)
    env = envelope(b"a@example.com", b"b@example.org")
    out = harness.submit(MESSAGE, env, command=[str(client)])
    assert out.returncode == 0, out.stderr
    assert (out.message, out.envelope) == (MESSAGE, env)


def test_install_without_qmail_writes_this_venvs_wrapper_again(installed, world):
    """--dev after --qmail (or the other way round) on one venv: the wrapper named the other
    install's directories, and every message would have been 81."""
    said = f"install.sh: {installed.wrapper} runs this venv: writing it again for this install"
    assert said in installed.again.stderr
    assert f"# qmail's user: {world.user.pw_name} (" in installed.wrapper.read_text()


def test_setup_keeps_a_changed_run_script_unless_forced(installed, world, tmp_path):
    where = ["--service-dir", str(tmp_path / "svc"), "--log-user", world.user.pw_name]
    assert _setup(installed, world, *where).returncode == 0
    run = tmp_path / "svc" / "run"
    assert f"unchanged {run}" in _setup(installed, world, *where).stdout
    run.write_text(run.read_text().replace("serve", "serve --max 32"))
    proc = _setup(installed, world, *where)
    assert f"kept {run}: it differs from what setup writes (--force replaces it)" in proc.stdout
    assert "--max 32" in run.read_text()
    assert f"wrote {run}" in _setup(installed, world, *where, "--force").stdout
    assert "--max 32" not in run.read_text()


def test_setup_refuses_to_give_a_shared_directory_away(installed, world, tmp_path):
    proc = _setup(installed, world, "--service-dir", str(tmp_path), "--socket", "/tmp/q.sock")
    assert proc.returncode == 2
    assert proc.stderr.startswith("qqfilter setup: --socket: the socket needs a directory")
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


@ROOT_ONLY
@pytest.mark.skipif(not shutil.which("setuidgid"), reason="no daemontools (install.sh --dev)")
def test_the_daemontools_run_script_starts_a_server_that_answers(installed, world):
    top, user = world.top / "daemontools", world.user
    top.mkdir()
    socket = top / "run" / "qqfilter" / "qqfilter.sock"
    proc = _setup(
        installed,
        world,
        "--service-dir",
        str(top / "svc"),
        "--socket",
        str(socket),
        "--log-user",
        user.pw_name,
        "--log-dir",
        str(top / "log"),
    )
    assert proc.returncode == 0, proc.stderr
    assert f'QQF_SOCKET="{socket}"' in proc.stdout
    run, log_run = top / "svc" / "run", top / "svc" / "log" / "run"
    for script in (run, log_run):
        assert script.read_text().splitlines()[0] == "#!/bin/sh"
        assert subprocess.run(["sh", "-n", str(script)], timeout=10).returncode == 0
    # as supervise runs it: from the service directory, as root, with little environment
    server = subprocess.Popen(
        [str(run)],
        cwd=run.parent,
        env={"PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert socket.exists(), server.stdout.read() if server.poll() is not None else "slow"
        assert socket.parent.stat().st_uid == user.pw_uid
        assert socket.stat().st_uid == user.pw_uid  # setuidgid: the server runs as the user
        harness = Harness(top)
        os.chown(harness.spool, user.pw_uid, user.pw_gid)  # the server spools as the user
        env = envelope(b"a@example.com", b"b@example.org")
        resident = {"QQF_SOCKET": str(socket), "QQF_SOCKETFALLBACK": "tempfail"}
        out = harness.submit(MESSAGE, env, env=resident, command=[str(installed.wrapper)])
        assert out.returncode == 0, out.stderr  # 71 if the server did not answer
        assert (out.message, out.envelope) == (MESSAGE, env)
    finally:
        server.send_signal(signal.SIGTERM)
        said = server.communicate(timeout=30)[0].decode()
    assert server.returncode == 0, said
    assert said.startswith(f"qqfilter serve: serving on {socket}")
    assert not socket.exists()
    # the log: multilog as the log user, in a directory made for it
    logger = subprocess.run(
        [str(log_run)],
        cwd=log_run.parent,
        env={"PATH": "/usr/bin:/bin"},
        input=said.encode(),
        timeout=30,
    )
    assert logger.returncode == 0
    assert (top / "log").stat().st_uid == user.pw_uid
    assert "qqfilter serve: stopped" in (top / "log" / "current").read_text()


def test_setup_systemd_writes_a_hardened_unit(installed, world, tmp_path):
    unit = tmp_path / "qqfilter.service"
    proc = _setup(installed, world, "systemd", "--unit", str(unit))
    assert proc.returncode == 0, proc.stderr
    text = unit.read_text()
    for line in (
        f"User={world.user.pw_name}",
        f"ExecStart={installed.wrapper} serve --socket /run/qqfilter/qqfilter.sock",
        "RuntimeDirectory=qqfilter",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        # a /tmp of its own, unless the installation is in /tmp (as here, a scratch one)
        f"PrivateTmp={'no' if str(installed.wrapper).startswith('/tmp/') else 'yes'}",
        "Restart=always",
    ):
        assert f"\n{line}\n" in text
    assert ':allow,QMAILQUEUE="' in proc.stdout
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze to verify the unit with")
    check = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
    assert "qqfilter.service" not in check.stderr, check.stderr


def test_the_run_scripts_in_the_docs_are_the_ones_setup_writes():
    """A line above ``#!/bin/sh`` makes supervise's exec fail (exec format error)."""
    from qqfilter.tools import setup

    blocks = (ROOT / "docs" / "resident.md").read_text().split("```")[1::2]
    scripts = [b.split("\n", 1)[1] for b in blocks if "#!/bin/sh" in b]  # less the info string
    defaults = {"user": "qmaild", "owner": "qmaild:nofiles", "program": "/var/qmail/bin/qqfilter"}
    run = setup.RUN.format(**defaults, socket_dir="/run/qqfilter", socket=setup.SOCKET)
    log = setup.LOG_RUN.format(log_user="qmaill", log_owner="qmaill:nofiles", log_dir=setup.LOG_DIR)
    assert scripts == [run, log]
    assert all(script.startswith("#!/bin/sh\n") for script in scripts)

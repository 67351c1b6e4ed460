"""QHPSI: s/qmail's scanner interface, with clamdscan against a real clamd and a script."""

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from clamav import EICAR_NAME, TEXT_PART, attachment, mime, samples
from conftest import assert_clean_failure, envelope

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

ENV = envelope(b"alice@example.com", b"bob@example.org")
CLEAN = mime(TEXT_PART, attachment(b"just a document\n" * 100, b"notes.txt"))

SCANNER = """\
import os, signal, sys, time
record = os.environ["SCANNER_RECORD"]
with open(os.path.join(record, "pid"), "w") as out:
    out.write(str(os.getpid()))
with open(os.path.join(record, "argv"), "w") as out:
    out.write("\\0".join(sys.argv[1:]))
for arg in sys.argv[1:]:
    if os.path.isfile(arg):
        with open(arg, "rb") as src, open(os.path.join(record, "file"), "wb") as dst:
            dst.write(src.read())
        with open(os.path.join(record, "mode"), "w") as out:
            out.write(oct(os.stat(arg).st_mode & 0o777))
with open(os.path.join(record, "parent"), "w") as out:
    out.write(str(os.getppid()))
if os.environ.get("SCANNER_CHILD"):
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    with open(os.path.join(record, "child"), "w") as out:
        out.write(str(child))
if os.environ.get("SCANNER_SETSID"):
    grandchild = os.fork()
    if grandchild == 0:  # a daemon of its own session, holding our stdout open
        os.setsid()
        time.sleep(float(os.environ["SCANNER_SETSID"]))
        os._exit(0)
    with open(os.path.join(record, "grandchild"), "w") as out:
        out.write(str(grandchild))
if os.environ.get("SCANNER_FLOOD"):
    block = b"x" * 65535 + b"\\n"
    for _ in range(int(os.environ["SCANNER_FLOOD"]) * 16):
        sys.stdout.buffer.write(block)
    sys.stdout.flush()
time.sleep(float(os.environ.get("SCANNER_SLEEP", "0")))
if os.environ.get("SCANNER_SIGNAL"):
    os.kill(os.getpid(), int(os.environ["SCANNER_SIGNAL"]))
print(os.environ.get("SCANNER_PRINT", ""))
sys.exit(int(os.environ.get("SCANNER_EXIT", "0")))
"""


@pytest.fixture
def scanner(tmp_path: Path) -> tuple[str, Path]:
    """A scanner program that records how it was run and exits as the test says."""
    program = tmp_path / "scanner"
    program.write_text(f"#!{sys.executable}\n{SCANNER}")
    program.chmod(0o755)
    record = tmp_path / "scanner-record"
    record.mkdir()
    return str(program), record


def run_with(qq, scanner, message: bytes = CLEAN, **env: str):
    program, record = scanner
    return qq.submit(message, ENV, env={"QHPSI": program, "SCANNER_RECORD": str(record), **env})


def test_clean_exit_passes_the_message_byte_identical(qq, scanner):
    out = run_with(qq, scanner, SCANNER_EXIT="0")
    assert out.returncode == 0, out.stderr
    assert out.message == CLEAN
    assert out.field("verdict") == "accept"


def test_scanner_gets_the_message_as_a_private_file_then_it_is_gone(qq, scanner):
    _, record = scanner
    out = run_with(qq, scanner, QHPSIARG1="--one", QHPSIARG2="two words", QHPSIARG3="")
    assert out.returncode == 0, out.stderr
    path, *rest = (record / "argv").read_text().split("\0")
    assert rest == ["--one", "two words"]
    assert Path(path).parent == qq.spool
    assert (record / "file").read_bytes() == CLEAN
    assert (record / "mode").read_text() == "0o600"
    assert not Path(path).exists()


def test_percent_s_places_the_file_among_the_words_of_qhpsi(qq, scanner):
    program, record = scanner
    out = qq.submit(
        CLEAN,
        ENV,
        env={
            "QHPSI": f"{program} --quiet %s --no-summary",
            "QHPSIARG1": "--last",
            "SCANNER_RECORD": str(record),
        },
    )
    assert out.returncode == 0, out.stderr
    first, path, *rest = (record / "argv").read_text().split("\0")
    assert (first, rest) == ("--quiet", ["--no-summary", "--last"])
    assert Path(path).parent == qq.spool


def test_infected_exit_is_31_with_the_name_the_scanner_printed(qq, scanner):
    out = run_with(qq, scanner, SCANNER_EXIT="1", SCANNER_PRINT="/x/y: Win.Trojan.Agent-1 FOUND")
    assert_clean_failure(out, 31)
    assert out.field("check") == "qhpsi"
    assert out.field("tag") == "Reject::DATA::Virus_Infected"
    assert out.field("reason") == "virus found: Win.Trojan.Agent-1"
    assert out.field("detail") == "exit code 1"


@pytest.mark.one_shot  # the scanner's exit is read the same way in both modes
def test_infected_without_a_name_is_still_refused(qq, scanner):
    out = run_with(qq, scanner, SCANNER_EXIT="1", QQF_CODES="sqmail")
    assert_clean_failure(out, 32)
    assert out.field("reason") == "virus found"


@pytest.mark.one_shot  # the scanner's exit is read the same way in both modes
def test_qhpsirc_and_qhpsirn_choose_the_codes(qq, scanner):
    codes = {"QHPSIRC": "3", "QHPSIRN": "4"}
    assert_clean_failure(run_with(qq, scanner, SCANNER_EXIT="3", **codes), 31)
    assert run_with(qq, scanner, SCANNER_EXIT="4", **codes).returncode == 0
    out = run_with(qq, scanner, SCANNER_EXIT="0", **codes)
    assert_clean_failure(out, 71)
    assert out.field("detail").startswith("scanner: exit code 0 after")


@pytest.mark.parametrize("code", ["2", "100"])
@pytest.mark.one_shot  # the scanner's exit is read the same way in both modes
def test_any_other_exit_is_71(qq, scanner, code):
    out = run_with(qq, scanner, SCANNER_EXIT=code)
    assert_clean_failure(out, 71)
    assert out.field("reason") == "virus scan not possible now, try again later"
    assert out.field("detail").startswith(f"scanner: exit code {code} after")


def test_scanner_killed_by_a_signal_is_71(qq, scanner):
    out = run_with(qq, scanner, SCANNER_SIGNAL="9")
    assert_clean_failure(out, 71)
    assert out.field("detail") == "scanner: killed by signal 9"


def test_scanner_past_the_deadline_is_killed_with_its_children(qq, scanner):
    _, record = scanner
    started = time.monotonic()
    out = run_with(qq, scanner, SCANNER_SLEEP="30", SCANNER_CHILD="1", QQF_SCANTIMEOUT="1")
    assert time.monotonic() - started < 5
    assert_clean_failure(out, 71)
    assert out.field("detail") == "scanner: no verdict within 1 s, killed"
    child = int((record / "child").read_text())
    time.sleep(0.2)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.one_shot  # the scanner's exit is read the same way in both modes
def test_missing_scanner_program_is_71(qq, tmp_path):
    out = qq.submit(CLEAN, ENV, env={"QHPSI": str(tmp_path / "no-such-scanner")})
    assert_clean_failure(out, 71)
    assert out.field("detail") == "no-such-scanner: cannot run: No such file or directory"


@pytest.mark.one_shot  # the scanner's exit is read the same way in both modes
def test_scanerror_accept_marks_the_message(qq, scanner):
    out = run_with(qq, scanner, SCANNER_EXIT="2", QQF_SCANERROR="accept")
    assert out.returncode == 0, out.stderr
    assert out.message == b"X-Virus-Status: Unscanned (qhpsi could not decide)\n" + CLEAN


@pytest.mark.one_shot  # the scanner's exit is read the same way in both modes
def test_size_limits_skip_the_scanner_and_the_log_says_so(qq, scanner):
    _, record = scanner
    out = run_with(qq, scanner, SCANNER_EXIT="1", QHPSIMAXSIZE="100")
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == "qhpsi: skipped: larger than 100 bytes"
    out = run_with(qq, scanner, SCANNER_EXIT="1", QHPSIMINSIZE=str(len(CLEAN) + 1))
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == f"qhpsi: skipped: smaller than {len(CLEAN) + 1} bytes"
    assert not (record / "argv").exists()


@pytest.mark.one_shot  # the scanner's exit is read the same way in both modes
def test_equal_qhpsirc_and_qhpsirn_is_a_configuration_error(qq, scanner):
    out = run_with(qq, scanner, QHPSIRC="0")
    assert_clean_failure(out, 55)
    assert "must differ from QHPSIRC" in out.field("reason")


def test_spool_without_o_tmpfile_is_copied_for_the_scanner(qq, scanner, tmp_path):
    """Where the spool is a created-and-unlinked file, it cannot be linked: it is copied."""
    _, record = scanner
    wrapper = tmp_path / "no-tmpfile.py"
    wrapper.write_text(
        "import errno, os, runpy, sys\n"
        "real = os.open\n"
        "def fake(path, flags, mode=0o777, **kw):\n"
        "    if flags & os.O_TMPFILE == os.O_TMPFILE:\n"
        "        raise OSError(errno.EOPNOTSUPP, 'no O_TMPFILE')\n"
        "    return real(path, flags, mode, **kw)\n"
        "os.open = fake\n"
        "sys.argv = ['qqfilter']\n"
        "runpy.run_module('qqfilter', run_name='__main__')\n"
    )
    out = qq.submit(
        CLEAN,
        ENV,
        env={"QHPSI": scanner[0], "SCANNER_RECORD": str(record)},
        command=[sys.executable, str(wrapper)],
    )
    assert out.returncode == 0, out.stderr
    assert (record / "file").read_bytes() == CLEAN


@pytest.mark.parametrize("shape", ["base64", "zipped"])
def test_clamdscan_against_the_real_clamd(qq, clamd_server, shape):
    env = {
        "QHPSI": "clamdscan",
        "QHPSIARG1": f"--config-file={clamd_server.config}",
        "QHPSIARG2": "--no-summary",
    }
    out = qq.submit(samples()[shape], ENV, env=env)
    assert_clean_failure(out, 31)
    assert out.field("reason") == f"virus found: {EICAR_NAME}"
    out = qq.submit(CLEAN, ENV, env=env)
    assert out.returncode == 0, out.stderr
    assert out.message == CLEAN


def test_clamdscan_fdpass_with_percent_s(qq, clamd_server):
    env = {
        "QHPSI": "clamdscan --fdpass --no-summary %s",
        "QHPSIARG1": f"--config-file={clamd_server.config}",
    }
    out = qq.submit(samples()["nested"], ENV, env=env)
    assert_clean_failure(out, 31)
    assert out.field("reason") == f"virus found: {EICAR_NAME}"


def test_clamdscan_with_clamd_down_is_71(qq, tmp_path):
    config = tmp_path / "clamd.conf"
    config.write_text(f"LocalSocket {tmp_path}/gone.sock\n")
    env = {"QHPSI": "clamdscan", "QHPSIARG1": f"--config-file={config}"}
    out = qq.submit(CLEAN, ENV, env=env)
    assert_clean_failure(out, 71)
    assert out.field("detail").startswith("clamdscan: exit code 2")


def test_both_scanners_may_run_and_either_refuses(qq, clamd_server, scanner):
    out = run_with(qq, scanner, samples()["base64"], QQF_CLAMD=clamd_server.unix)
    assert_clean_failure(out, 31)
    assert out.field("check") == "clamd"
    out = run_with(qq, scanner, QQF_CLAMD=clamd_server.unix, SCANNER_EXIT="1")
    assert_clean_failure(out, 31)
    assert out.field("check") == "qhpsi"
    assert os.path.exists(scanner[1] / "argv")


@pytest.mark.one_shot  # resident, the scan runs in the server: TERM to the client ends the client
def test_sigterm_during_a_scan_removes_the_file_and_the_scanner(qq, scanner):
    """qqfilter dies of the TERM as it would have, but the named file and the scanner go."""
    program, record = scanner
    result = {}

    def submit():
        result["out"] = qq.submit(
            CLEAN,
            ENV,
            env={"QHPSI": program, "SCANNER_RECORD": str(record), "SCANNER_SLEEP": "30"},
        )

    runner = threading.Thread(target=submit)
    runner.start()
    give_up = time.monotonic() + 20
    while not (record / "parent").exists() and time.monotonic() < give_up:
        time.sleep(0.05)
    os.kill(int((record / "parent").read_text()), signal.SIGTERM)
    runner.join(20)
    out = result["out"]
    assert out.returncode == -signal.SIGTERM
    assert not out.queued
    assert "Traceback" not in out.stderr
    scanner_pid = int((record / "pid").read_text())
    time.sleep(0.2)
    assert not _alive(scanner_pid)


@pytest.mark.one_shot  # the peak measured is the one-shot process's, which scans
def test_a_flood_of_scanner_output_costs_bounded_memory(qq, scanner):
    """600 MB on the scanner's stdout: read as it comes, only the last MAX_OUTPUT kept."""
    program, record = scanner
    env = {
        "QHPSI": program,
        "SCANNER_RECORD": str(record),
        "SCANNER_FLOOD": "600",
        "SCANNER_PRINT": "/x/y: Win.Trojan.Flood-1 FOUND",
        "SCANNER_EXIT": "1",
    }
    started = time.monotonic()
    out = qq.submit(CLEAN, ENV, env=env, measure=True)
    assert time.monotonic() - started < 10
    assert_clean_failure(out, 31)
    assert out.field("reason") == "virus found: Win.Trojan.Flood-1", out.stderr
    assert out.peak_kib < 64 * 1024, out.peak_kib


@pytest.mark.parametrize("scanner_sleep", ["0", "30"], ids=["exits", "hangs"])
def test_a_setsid_grandchild_holding_stdout_does_not_hold_the_answer(qq, scanner, scanner_sleep):
    """A daemon the scanner started in a session of its own keeps the pipe open: the answer
    comes when the scanner exits (or at the deadline), and the named file is gone."""
    program, record = scanner
    env = {
        "QHPSI": program,
        "SCANNER_RECORD": str(record),
        "SCANNER_SETSID": "20",
        "SCANNER_SLEEP": scanner_sleep,
        "QQF_SCANTIMEOUT": "2",
    }
    started = time.monotonic()
    try:
        out = qq.submit(CLEAN, ENV, env=env, timeout=40)
        took = time.monotonic() - started
    finally:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
            os.kill(int((record / "grandchild").read_text()), signal.SIGKILL)
    assert not list(qq.spool.glob(".qqfilter-qhpsi-*"))
    if scanner_sleep == "0":
        assert took < 2, took
        assert out.returncode == 0, out.stderr
    else:
        assert took < 2 + 1.5, took
        assert_clean_failure(out, 71)
        assert out.field("detail") == "scanner: no verdict within 2 s, killed"

"""The subcommands for people: ``qqfilter test`` and ``qqfilter config``; what every
subcommand does when its output's reader goes away or a person presses Ctrl-C."""

import os
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from conftest import FIXTURES, QQFILTER


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([QQFILTER, *args], capture_output=True, text=True, env=env, timeout=30)


def report(stdout: str) -> dict[str, str]:
    return {
        k.strip(): v.strip()
        for k, _, v in (
            line.partition(":") for line in stdout.splitlines() if not line.startswith(" ")
        )
    }


def test_test_finds_the_envelope_beside_the_message(qq):
    proc = run("test", str(FIXTURES / "messages" / "plain.eml"), env=qq.env)
    assert proc.returncode == 0, proc.stderr
    shown = report(proc.stdout)
    assert shown["verdict"] == "accept"
    assert shown["exit code"] == f"0 (handed to {qq.queue})"
    assert shown["reply"] == "250 ok"
    assert not (qq.record / "message").exists()  # a dry run never queues


def test_test_shows_a_refusal_with_its_code_reply_and_tag(qq):
    env = {**qq.env, "QQF_MAXSIZE": "100"}
    proc = run(
        "test", str(FIXTURES / "messages" / "plain.eml"), "--from", "", "--to", "x@y", env=env
    )
    shown = report(proc.stdout)
    assert shown["verdict"].startswith("reject by size: message is ")
    assert shown["tag"] == "Reject::DATA::Invalid_Size"
    assert shown["exit code"] == "31"
    assert shown["reply"] == "554 mail server permanently rejected message (#5.3.0)"


def test_test_shows_the_custom_reply_when_errfd_is_set(qq):
    env = {**qq.env, "QQF_MAXSIZE": "100", "QQF_ERRFD": "6", "QQF_CODES": "sqmail"}
    proc = run("test", str(FIXTURES / "messages" / "plain.eml"), env=env)
    shown = report(proc.stdout)
    assert shown["exit code"] == "82"
    assert shown["reply"].startswith("554 message is ")
    assert shown["reply"].endswith("(#5.3.4)")


def test_test_reports_a_malformed_envelope_file(qq, tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_bytes(b"Fa@b\0Fc@d\0\0")
    proc = run("test", str(FIXTURES / "messages" / "plain.eml"), "--envelope", str(bad), env=qq.env)
    shown = report(proc.stdout)
    assert shown["verdict"].startswith("error: envelope: a second sender")
    assert shown["exit code"] == "91"
    assert shown["reply"] == "451 qq internal bug (#4.3.0)"


def test_test_without_an_envelope_says_how_to_give_one(qq, tmp_path):
    message = tmp_path / "lonely.eml"
    message.write_bytes(b"Subject: x\n\n")
    proc = run("test", str(message), env=qq.env)
    assert proc.returncode == 2
    assert "give --to, or --envelope" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_test_of_a_missing_file_is_a_usage_error(qq, tmp_path):
    absent = tmp_path / "absent.eml"
    proc = run("test", str(absent), "--to", "x@y", env=qq.env)
    assert proc.returncode == 2
    assert proc.stderr == f"qqfilter: {absent}: no such file or directory\n"
    assert proc.stdout == ""
    proc = run(
        "test", str(FIXTURES / "messages" / "plain.eml"), "--envelope", str(absent), env=qq.env
    )
    assert (proc.returncode, proc.stderr) == (2, f"qqfilter: {absent}: no such file or directory\n")


def test_test_of_a_directory_is_a_usage_error(qq, tmp_path):
    proc = run("test", str(tmp_path), "--to", "x@y", env=qq.env)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"qqfilter: {tmp_path}: is a directory\n"
    message = str(FIXTURES / "messages" / "plain.eml")
    proc = run("test", message, "--envelope", str(tmp_path), env=qq.env)
    assert (proc.returncode, proc.stderr) == (2, f"qqfilter: {tmp_path}: is a directory\n")


def test_test_of_an_unreadable_file_is_a_usage_error(qq, tmp_path):
    """As root (CI), the file is read without root's right to read every file."""
    secret = tmp_path / "secret.eml"
    secret.write_bytes(b"Subject: x\n\nhi\n")
    secret.chmod(0)
    command = [QQFILTER, "test", str(secret), "--to", "x@y"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads every file, and there is no setpriv to drop that")
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    proc = subprocess.run(command, capture_output=True, text=True, env=qq.env, timeout=30)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"qqfilter: {secret}: permission denied\n"


def test_a_message_can_be_piped_into_test(qq):
    """A pipe is not a directory: ``... | qqfilter test /dev/stdin --to x`` works."""
    with open(FIXTURES / "messages" / "plain.eml", "rb") as message:
        proc = subprocess.run(
            [QQFILTER, "test", "/dev/stdin", "--to", "x@y"],
            stdin=message,
            capture_output=True,
            text=True,
            env=qq.env,
            timeout=30,
        )
    assert proc.returncode == 0, proc.stderr
    assert report(proc.stdout)["verdict"] == "accept"


LOG_LINE = "qqfilter: pid=1 verdict=accept from=<a@example.com> rcpts=1 size=9 ms=1\n"


@pytest.mark.parametrize(
    "command",
    [
        ["config"],
        ["test", "plain.eml"],
        ["replay", "plain.eml"],
        ["replay", "--jobs", "2", "--json", "mbox"],
        ["replay", "--csv", "mbox"],
        ["stats", "log"],
        ["stats", "--json", "log"],
    ],
)
def test_a_closed_pipe_ends_any_command_quietly(qq, tmp_path, command):
    """``qqfilter ... | head``: when the reader has gone, the command stops without a word,
    with the status a shell shows for ``cat`` ended by SIGPIPE (141), not a traceback (the
    pipe's reader is closed before the command starts: every write fails)."""
    (tmp_path / "plain.eml").write_bytes((FIXTURES / "messages" / "plain.eml").read_bytes())
    (tmp_path / "plain.env").write_bytes((FIXTURES / "messages" / "plain.env").read_bytes())
    (tmp_path / "mbox").write_bytes(b"From a\nSubject: x\n\nhi\n" * 50)
    (tmp_path / "log").write_text(LOG_LINE * 10)
    reader, writer = os.pipe()
    os.close(reader)
    try:
        proc = subprocess.run(
            [QQFILTER, *command],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            env=qq.env,
            cwd=tmp_path,
            timeout=60,
        )
    finally:
        os.close(writer)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_a_closed_pipe_after_some_lines_is_quiet_too(tmp_path):
    """The shell's own case: ``qqfilter replay BIG | head -1``, the pipe closing mid-run."""
    (tmp_path / "mbox").write_bytes(b"From a\nSubject: x\n\nhi\n" * 3000)
    proc = subprocess.run(
        f"{QQFILTER} replay --jobs 2 mbox | head -1; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "QQF_CONFIG": "/dev/null"},
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.stdout.splitlines() == ['accept  mbox:1  <>  "x"', "141"]
    assert proc.stderr == ""


def _wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_ctrl_c_while_stats_reads_stdin_is_one_line(qq):
    proc = subprocess.Popen(
        [QQFILTER, "stats", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=qq.env,
    )
    try:
        proc.stdin.write(LOG_LINE)
        proc.stdin.flush()
        # waiting for more of the log (its reader asleep in the kernel's pipe_read)
        wchan = Path(f"/proc/{proc.pid}/wchan")
        _wait_for(lambda: "pipe_read" in wchan.read_text())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out, err) == (130, "", "qqfilter: interrupted\n")


def test_ctrl_c_during_a_replay_with_workers_is_one_line(tmp_path):
    """Ctrl-C at a terminal signals the whole process group: the workers say nothing, the
    command says ``interrupted`` once, exits 130, and leaves no process behind."""
    (tmp_path / "mbox").write_bytes(b"From a\nSubject: x\n\nhi\n" * 20_000)
    proc = subprocess.Popen(
        [QQFILTER, "replay", "--jobs", "2", str(tmp_path / "mbox")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "QQF_CONFIG": "/dev/null"},
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().startswith("accept  ")  # replaying, workers running
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (130, "qqfilter: interrupted\n")
    assert "verdict" not in out  # no summary: the run was cut short

    def group_gone() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        return False

    _wait_for(group_gone, 10)


def test_the_version_has_one_source():
    """qqfilter/__init__.py says the version; pyproject.toml reads it from there (nothing
    reads package metadata at run time), and the changelog has an entry for it."""
    from conftest import ROOT

    import qqfilter

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "qqfilter.__version__"}
    proc = subprocess.run([QQFILTER, "--version"], capture_output=True, text=True, timeout=30)
    assert proc.stdout == f"qqfilter {qqfilter.__version__}\n"
    assert f"## [{qqfilter.__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_config_shows_values_and_sources(qq, tmp_path):
    config = tmp_path / "q.toml"
    config.write_text("maxsize = 5000\n")
    proc = run("config", env={**qq.env, "QQF_CONFIG": str(config), "QQF_LOG": "json"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line[:1].isalpha()}
    assert lines["maxsize"] == f"maxsize = 5000  # QQF_MAXSIZE, from {config}"
    assert lines["log"] == 'log = "json"  # QQF_LOG, from QQF_LOG'
    assert "from default" in lines["codes"]


def test_config_exits_non_zero_and_names_each_invalid_setting(qq):
    proc = run("config", env={**qq.env, "QQF_MAXSIZE": "-1", "QQF_CODES": "x"})
    assert proc.returncode == 1
    assert "setting maxsize from QQF_MAXSIZE" in proc.stderr
    assert "setting codes from QQF_CODES" in proc.stderr


def test_config_output_is_a_toml_file_that_gives_the_same_settings(qq, tmp_path):
    lists = "zen.example=127.0.0.[2..11]*3,b.example"
    given = {"QQF_MAXSIZE": "777", "QQF_DROP": "spam,virus", "QQF_DNSBL": lists}
    proc = run("config", env={**qq.env, **given})
    saved = tmp_path / "saved.toml"
    saved.write_text(proc.stdout)
    again = run("config", env={**qq.env, "QQF_CONFIG": str(saved)})
    assert again.returncode == 0, again.stderr
    lines = {line.split()[0]: line for line in again.stdout.splitlines() if line[:1].isalpha()}
    assert lines["maxsize"].startswith("maxsize = 777  # QQF_MAXSIZE, from " + str(saved))
    assert lines["drop"].startswith('drop = ["spam", "virus"]')
    assert lines["dnsbl"].startswith('dnsbl = ["zen.example=127.0.0.[2..11]*3", "b.example"]')


def test_every_setting_is_documented_with_its_variable():
    """docs/settings.md is the administrator's list: a setting missing there does not exist."""
    from conftest import ROOT

    from qqfilter.settings import every_setting

    documented = (ROOT / "docs" / "settings.md").read_text()
    missing = [
        s.name
        for s in every_setting()
        if f"`{s.name}`" not in documented or f"`{s.env}`" not in documented
    ]
    assert missing == []

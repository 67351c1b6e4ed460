"""install.sh: a venv with the package, and a qmail wrapper that really works as QMAILQUEUE."""

import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, Harness, envelope

MESSAGE = b"Subject: via the wrapper\n\nhello\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """install.sh --qmail run twice into a fresh venv and qmail home; (venv, wrapper)."""
    top = tmp_path_factory.mktemp("install")
    (top / "qmail" / "bin").mkdir(parents=True)
    command = [
        str(ROOT / "install.sh"),
        "--qmail",
        "--venv",
        str(top / "venv"),
        "--qmailhome",
        str(top / "qmail"),
    ]
    for _ in range(2):  # idempotent: the second run must succeed and change nothing visible
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert ':allow,QMAILQUEUE="' + str(top / "qmail" / "bin" / "qqfilter") in proc.stdout
    return top / "venv", top / "qmail" / "bin" / "qqfilter"


def test_wrapper_calls_the_venv_interpreter_without_site(installed):
    venv, wrapper = installed
    assert wrapper.stat().st_mode & 0o777 == 0o755
    assert wrapper.read_text().splitlines()[0] == f"#!{venv}/bin/python3 -IS"
    assert list(wrapper.parent.iterdir()) == [wrapper]  # no temporary file left


def test_wrapper_works_as_the_qmailqueue_program(installed, tmp_path):
    _, wrapper = installed
    harness = Harness(tmp_path)
    env = envelope(b"a@example.com", b"b@example.org")
    out = harness.submit(MESSAGE, env, command=[str(wrapper)])
    assert out.returncode == 0, out.stderr
    assert (out.message, out.envelope) == (MESSAGE, env)
    assert harness.spool_is_empty()


def test_wrapper_without_the_package_is_81_and_one_line(installed, tmp_path):
    _, wrapper = installed
    broken = tmp_path / "qqfilter"
    text = wrapper.read_text()
    site = text.split('sys.path.insert(0, "')[1].split('"')[0]
    broken.write_text(text.replace(site, str(tmp_path / "nowhere")))
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


def test_unknown_option_is_a_usage_error():
    proc = subprocess.run(
        [str(ROOT / "install.sh"), "--frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "unknown option: --frobnicate" in proc.stderr

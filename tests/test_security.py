"""What a filter facing the internet must never do, checked on the real process and code."""

import base64
import io
import re
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, envelope

ENV = envelope(b"alice@example.com", b"bob@example.org")


def test_no_shell_anywhere():
    """Programs are run with argv lists: no shell to interpret what a message holds."""
    shell = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput\(")
    found = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "qqfilter").rglob("*.py")
        if shell.search(path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize("with_headers", [False, True])
def test_the_message_handed_on_is_mode_0600(qq, nsd_server, with_headers):
    """The spool (or its copy with headers) that qmail-queue reads is the filter's alone."""
    env = {"SPF": "1", "QQF_DNS": nsd_server.address} if with_headers else {}
    out = qq.submit(b"Subject: x\n\nhi\n", ENV, env=env)
    assert out.returncode == 0, out.stderr
    assert (qq.record / "mode0").read_text() == "0o600"
    assert out.message.startswith(b"Received-SPF") == with_headers


def test_names_from_a_message_never_become_paths(qq):
    """Attachment and archive member names that climb out of a directory are only read."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../../../tmp/qqfilter-escaped.txt", b"x")
        archive.writestr("/etc/qqfilter-absolute.txt", b"x")
    message = (
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n--b\n'
        b'Content-Type: application/zip; name="../../../tmp/qqfilter-part.zip"\n'
        b"Content-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(buffer.getvalue())
        + b"--b--\n"
    )
    out = qq.submit(message, ENV)
    assert out.returncode == 0, out.stderr
    for name in (
        "/tmp/qqfilter-escaped.txt",
        "/etc/qqfilter-absolute.txt",
        "/tmp/qqfilter-part.zip",
    ):
        assert not Path(name).exists()
    assert qq.spool_is_empty()

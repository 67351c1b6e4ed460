"""``qqfilter replay`` over a qmail queue in qmail's layout, a maildir, an mbox and files."""

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import QQFILTER

SMTPD = (
    b"Received: (qmail 4242 invoked from network); 24 Nov 2026 10:00:01 -0000\n"
    b"Received: from unknown (HELO mail.example.com) (192.0.2.1)\n"
    b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
)
CLEAN = SMTPD + b"From: alice@example.com\nSubject: lunch\n\nThursday?\n"
EXE = SMTPD + (
    b"Subject: invoice\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
    b"--b\nContent-Type: text/plain\n\nsee attached\n--b\n"
    b"Content-Type: application/octet-stream; name=invoice.pdf.exe\n"
    b"Content-Transfer-Encoding: base64\n\n"
    + base64.encodebytes(b"MZ\x90\x00" + bytes(100))
    + b"--b--\n"
)
BOUNCE = SMTPD + b"From: MAILER-DAEMON@elsewhere.example\nSubject: failure notice\n\nsorry\n"


def make_queue(root: Path, messages: list[tuple[bytes, bytes, list[bytes]]]) -> Path:
    """A qmail queue as qmail-queue and qmail-send leave it: split 23, inode numbers."""
    queue = root / "queue"
    for name in ("mess", "info", "local", "remote", "todo", "intd", "bounce", "pid", "lock"):
        (queue / name).mkdir(parents=True)
    for sub in ("mess", "info", "local", "remote"):
        for split in range(23):
            (queue / sub / str(split)).mkdir()
    for number, (data, sender, recipients) in enumerate(messages):
        inode = 1_000_000 + number * 7
        split = str(inode % 23)
        (queue / "mess" / split / str(inode)).write_bytes(data)
        (queue / "info" / split / str(inode)).write_bytes(b"F" + sender + b"\0")
        local = [r for r in recipients if r.endswith(b"@example.org")]
        remote = [r for r in recipients if r not in local]
        for kind, addresses in (("local", local), ("remote", remote)):
            if addresses:
                records = b"".join(
                    (b"D" if i else b"T") + a + b"\0" for i, a in enumerate(addresses)
                )
                (queue / kind / split / str(inode)).write_bytes(records)
    return queue


def replay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "QQF_CONFIG": "/dev/null", **(env or {})}
    return subprocess.run(
        [QQFILTER, "replay", *args], capture_output=True, text=True, env=environ, timeout=120
    )


def records(out: subprocess.CompletedProcess) -> tuple[list[dict], dict]:
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    return lines[:-1], lines[-1]["summary"]


def tree_digest(root: Path) -> str:
    """Names, contents and modes of everything under ``root``: a replay must change none."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path).encode() + oct(path.stat().st_mode).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_a_qmail_queue_is_replayed_in_place(tmp_path):
    queue = make_queue(
        tmp_path,
        [
            (CLEAN, b"alice@example.com", [b"bob@example.org"]),
            (EXE, b"mallory@example.net", [b"bob@example.org", b"carol@example.org"]),
            (BOUNCE, b"", [b"dave@example.org"]),
        ],
    )
    before = tree_digest(queue)
    out = replay("--json", str(queue))
    assert out.returncode == 0, out.stderr
    found, summary = records(out)
    assert [r["verdict"] for r in found] == ["accept", "reject", "accept"]
    assert found[1]["tag"] == "Reject::DATA::MIME_Attach"
    assert found[1]["reason"].startswith('attachment "invoice.pdf.exe": blocked')
    assert found[0]["source"] == f"{queue}/mess/{1_000_000 % 23}/1000000"
    assert all("envelope from the queue" in r["derived"] for r in found)
    assert all("client from qmail-smtpd's Received line" in r["derived"] for r in found)
    assert summary["verdicts"] == {"accept": 2, "reject": 1}
    assert summary["tags"] == {"Reject::DATA::MIME_Attach": 1}
    assert tree_digest(queue) == before


def test_a_queue_replay_uses_its_envelope_and_client(tmp_path, nsd_server):
    """SPF sees the queue's sender and the client of qmail-smtpd's line."""
    queue = make_queue(tmp_path, [(CLEAN, b"alice@fail.spf.test", [b"bob@example.org"])])
    out = replay("--json", str(queue), env={"SPF": "3", "QQF_DNS": nsd_server.address})
    (record,), _ = records(out)
    assert record["verdict"] == "reject"
    assert record["tag"] == "Reject::SPF::Fail"


def test_a_maildir_derives_envelopes_from_headers(tmp_path):
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    delivered = b"Return-Path: <alice@example.com>\nDelivered-To: bob@example.org\n"
    (maildir / "new" / "1700000000.1.host").write_bytes(delivered + CLEAN)
    (maildir / "cur" / "1700000001.2.host:2,S").write_bytes(delivered + EXE)
    (maildir / "tmp" / "ignored").write_bytes(b"half written")
    out = replay("--json", str(maildir))
    found, _summary = records(out)
    assert [Path(r["source"]).parent.name for r in found] == ["new", "cur"]
    assert [r["verdict"] for r in found] == ["accept", "reject"]
    assert all(r["derived"].startswith("envelope from headers") for r in found)


def test_an_mbox_is_split_on_from_lines(tmp_path):
    mbox = tmp_path / "spam.mbox"
    mbox.write_bytes(
        b"From alice@example.com Tue Nov 24 10:00:00 2026\n" + CLEAN + b"\n"
        b"From mallory@example.net Tue Nov 24 10:01:00 2026\n" + EXE + b"\n"
        b"From nobody Tue Nov 24 10:02:00 2026\nSubject: no client\nTo: bob@example.org\n\nhi\n"
    )
    out = replay("--json", str(mbox))
    found, _ = records(out)
    assert [r["source"] for r in found] == [f"{mbox}:1", f"{mbox}:2", f"{mbox}:3"]
    assert [r["verdict"] for r in found] == ["accept", "reject", "accept"]
    assert "no client address: treated as local mail" in found[2]["derived"]


def test_files_with_envelopes_beside_them_and_options_for_the_rest(tmp_path):
    (tmp_path / "one.eml").write_bytes(CLEAN)
    (tmp_path / "one.env").write_bytes(b"Falice@example.com\0Tbob@example.org\0\0")
    (tmp_path / "two").write_bytes(EXE)
    (tmp_path / "two.env").write_bytes(b"F\0Tbob@example.org\0\0")
    (tmp_path / "three.eml").write_bytes(b"Subject: bare\n\nno headers to go by\n")
    out = replay("--json", str(tmp_path))
    found, _ = records(out)
    by_name = {Path(r["source"]).name: r for r in found}
    assert by_name["one.eml"]["derived"].startswith("envelope from one.env")
    assert by_name["two"]["derived"].startswith("envelope from two.env")
    assert by_name["two"]["verdict"] == "reject"
    assert by_name["three.eml"]["derived"].startswith("envelope from headers")
    out = replay(
        "--json",
        "--from",
        "x@example.com",
        "--to",
        "y@example.org",
        "--ip",
        "192.0.2.9",
        str(tmp_path / "three.eml"),
    )
    (record,), _ = records(out)
    assert record["derived"] == "envelope from options"


def test_an_unreadable_source_is_reported_and_the_run_goes_on(tmp_path):
    (tmp_path / "ok.eml").write_bytes(CLEAN)
    out = replay(str(tmp_path / "missing"), str(tmp_path / "ok.eml"))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0] == f"unreadable  {tmp_path}/missing  no such file or directory"
    assert lines[1] == f"accept  {tmp_path}/ok.eml"
    assert "unreadable" in out.stdout.split("verdict", 1)[1]


def test_the_same_sources_give_the_same_verdicts_in_any_mode(tmp_path):
    queue = make_queue(
        tmp_path,
        [(CLEAN if i % 3 else EXE, b"a@example.com", [b"b@example.org"]) for i in range(30)],
    )
    first = replay("--json", str(queue))
    again = replay("--json", str(queue))
    parallel = replay("--json", "--jobs", "2", str(queue))
    assert first.stdout == again.stdout == parallel.stdout
    assert records(first)[1]["verdicts"] == {"accept": 20, "reject": 10}


def test_csv_and_text_carry_the_same_data(tmp_path):
    queue = make_queue(tmp_path, [(EXE, b"a@example.com", [b"b@example.org"])])
    rows = list(csv.reader(io.StringIO(replay("--csv", str(queue)).stdout)))
    assert rows[0] == ["source", "verdict", "code", "check", "tag", "reason", "notes", "derived"]
    assert rows[1][1:5] == ["reject", "31", "mime", "Reject::DATA::MIME_Attach"]
    assert ["summary", "name", "count"] in rows
    assert ["verdicts", "reject", "1"] in rows
    text = replay(str(queue)).stdout
    assert text.splitlines()[0].startswith("reject  ")
    assert "Reject::DATA::MIME_Attach" in text.split("\n\n")[2]


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_no_progress_bar_when_piped(tmp_path, jobs):
    queue = make_queue(tmp_path, [(CLEAN, b"a@example.com", [b"b@example.org"])] * 3)
    out = replay("--jobs", jobs, str(queue))
    assert out.returncode == 0
    assert out.stderr == ""
    assert "replayed" not in out.stdout
    assert os.path.isdir(queue)


def test_a_progress_bar_on_a_terminal(tmp_path):
    import pty

    queue = make_queue(tmp_path, [(CLEAN, b"a@example.com", [b"b@example.org"])] * 30)
    controller, terminal = pty.openpty()
    try:
        out = subprocess.run(
            [QQFILTER, "replay", str(queue)],
            stdout=subprocess.PIPE,
            stderr=terminal,
            env={"PATH": "/usr/bin:/bin", "QQF_CONFIG": "/dev/null"},
            timeout=120,
        )
        shown = os.read(controller, 65536).decode()
    finally:
        os.close(controller)
        os.close(terminal)
    assert out.returncode == 0
    assert "\rreplay [#########################.....] 25/30" in shown
    assert shown.endswith("\rreplay [" + "#" * 30 + "] 30/30\r\n")


def test_an_unreadable_entry_in_a_directory_does_not_stop_the_rest(tmp_path):
    (tmp_path / "a.eml").write_bytes(CLEAN)
    (tmp_path / "b.eml").symlink_to(tmp_path / "b.eml")  # a loop: opening it fails
    (tmp_path / "c.eml").write_bytes(CLEAN)
    out = replay("--json", str(tmp_path))
    found, _ = records(out)
    assert [Path(r["source"]).name for r in found] == ["a.eml", "b.eml", "c.eml"]
    assert [r["verdict"] for r in found] == ["accept", "unreadable", "accept"]
    assert out.returncode == 1

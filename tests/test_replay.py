"""``qqfilter replay`` over a qmail queue in qmail's layout, a maildir, an mbox and files."""

import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from conftest import QQFILTER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    assert lines[1] == f'accept  {tmp_path}/ok.eml  <>  "lunch"'
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
    assert rows[0] == [
        "source",
        "verdict",
        "code",
        "check",
        "tag",
        "reason",
        "notes",
        "derived",
        "sender",
        "subject",
    ]
    assert rows[1][1:5] == ["reject", "31", "mime", "Reject::DATA::MIME_Attach"]
    assert rows[1][8:] == ["a@example.com", "invoice"]
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


def on_a_terminal(args: list[str], stdout_too: bool = False) -> tuple[int, str, str]:
    """Run ``qqfilter replay ARGS`` with stderr (and, if ``stdout_too``, stdout) on a pty of
    120 columns; its exit status, what the terminal received, and stdout when it is a pipe.
    The terminal is read as the command runs (a full pty would stop it)."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    received = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                return
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        proc = subprocess.Popen(
            [QQFILTER, "replay", *args],
            stdout=terminal if stdout_too else subprocess.PIPE,
            stderr=terminal,
            env={"PATH": "/usr/bin:/bin", "QQF_CONFIG": "/dev/null"},
        )
        os.close(terminal)
        out = proc.stdout.read().decode() if proc.stdout else ""
        proc.wait(timeout=120)
        reader.join(timeout=30)
    finally:
        os.close(controller)
    return proc.returncode, received.decode(), out


BAR = re.compile(r"replay \[[#.]{30}\] (\d+)/(\d+)  [\d.]+/s  (\d+:\d\d|--:--) left")


def screen(stream: str) -> list[str]:
    """The lines a terminal shows after ``stream``: ``\\r`` goes back to the line's start,
    ``ESC [K`` erases to its end, other characters overwrite."""
    lines, line, column = [], [], 0
    for token in re.findall(r"\x1b\[K|\r|\n|[^\r\n\x1b]", stream):
        if token == "\r":
            column = 0
        elif token == "\n":
            lines.append("".join(line))
            line, column = [], 0
        elif token == "\x1b[K":
            del line[column:]
        else:
            line[column : column + 1] = [token]
            column += 1
    return [*lines, "".join(line)]


def test_a_progress_bar_on_a_terminal_with_rate_and_time_left(tmp_path):
    queue = make_queue(tmp_path, [(CLEAN, b"a@example.com", [b"b@example.org"])] * 30)
    code, shown, out = on_a_terminal([str(queue)])
    assert code == 0
    bars = BAR.findall(shown)
    assert bars, shown
    assert all(total == "30" for _done, total, _left in bars)
    assert bars[-1][:2] == ("30", "30")  # the last one drawn is the whole
    assert "\n" not in shown  # one line, redrawn in place...
    assert shown.endswith("\r\x1b[K")  # ...and taken off at the end
    assert screen(shown) == [""]
    assert "replay [" not in out
    assert out == replay(str(queue)).stdout


def test_result_lines_are_never_written_behind_the_bar(tmp_path):
    """stdout and stderr on one terminal: every line on the screen is a result line as it is
    piped (the bar taken off before each and drawn below it), and the bar went last."""
    queue = make_queue(
        tmp_path,
        [(CLEAN if i % 3 else EXE, b"a@example.com", [b"b@example.org"]) for i in range(40)],
    )
    code, shown, _ = on_a_terminal(["--jobs", "2", str(queue)], stdout_too=True)
    assert code == 0
    piped = replay(str(queue)).stdout
    assert screen(shown) == [*piped.splitlines(), ""]
    assert len(BAR.findall(shown)) >= 40  # it was there: redrawn below each result line


def test_no_progress_bar_when_stderr_is_a_file(tmp_path):
    queue = make_queue(tmp_path, [(CLEAN, b"a@example.com", [b"b@example.org"])] * 30)
    with open(tmp_path / "err", "w+") as err:
        out = subprocess.run(
            [QQFILTER, "replay", str(queue)],
            stdout=subprocess.PIPE,
            stderr=err,
            env={"PATH": "/usr/bin:/bin", "QQF_CONFIG": "/dev/null"},
            timeout=120,
        )
    assert out.returncode == 0
    assert (tmp_path / "err").read_text() == ""


def test_the_bar_shows_the_rate_and_what_is_left():
    from qqfilter.tools.replay import Progress

    progress = Progress()
    progress.done, progress.total = 250, 1000
    assert progress.line(10.0) == (
        "replay [#######.......................] 250/1000  25/s  0:30 left"
    )
    progress.done = 3
    assert progress.line(2.0).endswith(" 3/1000  1.5/s  11:05 left")
    progress.done = 1
    assert progress.line(4000.0).endswith(" 1/1000  0.0/s  1110:00:00 left")
    progress.done = 250
    narrow = progress.line(10.0, columns=50)  # the bar gives way to the numbers
    assert narrow == "replay [###...........] 250/1000  25/s  0:30 left"
    assert len(narrow) < 50
    assert progress.line(10.0, columns=40) == "replay 250/1000  25/s  0:30 left"


def test_each_line_names_the_sender_and_the_subject(tmp_path):
    """Decoded (RFC 2047), escaped (nothing a sender writes can move the cursor, colour the
    terminal or start a line), cut at 60 characters; the sender the message was replayed
    with, ``<>`` for a bounce."""
    subjects = {
        "a.eml": b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_?=\n =?iso-8859-1?b?S/Zsbg==?=",
        "b.eml": b'Subject: \x1b[31mred\x1b[0m "quoted" \\ back\xff\xe2\x80\xaeevil',
        "c.eml": b"Subject: " + b"0123456789" * 10,
        "d.eml": b"Subject: =?x-unknown?q?caf=C3=A9?= =?utf-8?b?!!?=",
        "e.eml": b"X-No-Subject: here",
    }
    for name, field in subjects.items():
        (tmp_path / name).write_bytes(field + b"\nFrom: x@example.com\n\nhi\n")
        sender = b"" if name == "e.eml" else b"s\x07@" + name.encode()
        (tmp_path / name).with_suffix(".env").write_bytes(b"F" + sender + b"\0Tbob@example.org\0\0")
    out = replay(str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:5] == [
        f'accept  {tmp_path}/a.eml  <s\\x07@a.eml>  "Grüße aus Köln"',
        f"accept  {tmp_path}/b.eml  <s\\x07@b.eml>  "
        r'"\x1b[31mred\x1b[0m \"quoted\" \\ back\xff\u202eevil"',
        f'accept  {tmp_path}/c.eml  <s\\x07@c.eml>  "{("0123456789" * 6)[:57]}..."',
        f'accept  {tmp_path}/d.eml  <s\\x07@d.eml>  "café"',
        f'accept  {tmp_path}/e.eml  <>  ""',
    ]
    found, _ = records(replay("--json", str(tmp_path)))
    assert [(r["sender"], r["subject"]) for r in found][::4] == [
        ("s\\x07@a.eml", "Grüße aus Köln"),
        ("", ""),
    ]


def test_an_entry_left_out_in_a_directory_does_not_stop_the_rest(tmp_path):
    (tmp_path / "a.eml").write_bytes(CLEAN)
    (tmp_path / "b.eml").symlink_to(tmp_path / "b.eml")  # a loop: never followed
    (tmp_path / "c.eml").write_bytes(CLEAN)
    out = replay("--json", str(tmp_path))
    found, _ = records(out)
    assert [Path(r["source"]).name for r in found] == ["a.eml", "b.eml", "c.eml"]
    assert [r["verdict"] for r in found] == ["accept", "skipped", "accept"]
    assert found[1]["reason"] == "a symbolic link: not followed"
    assert out.returncode == 1


SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"


def test_links_in_a_maildir_or_queue_are_never_followed(tmp_path):
    """As root, a link to /etc/shadow in a maildir or queue must not be read (here: a file
    of its shape); nor a link standing in for a queue's envelope file or a maildir's new/."""
    shadow = tmp_path / "shadow"
    shadow.write_bytes(SECRET)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.host").symlink_to(shadow)
    (maildir / "cur" / "2.host:2,S").write_bytes(CLEAN)
    queue = make_queue(tmp_path, [(CLEAN, b"a@example.com", [b"b@example.org"])] * 2)
    split = str(1_000_007 % 23)
    (queue / "mess" / split / "1000007").unlink()
    (queue / "mess" / split / "1000007").symlink_to(shadow)
    sender = queue / "info" / str(1_000_000 % 23) / "1000000"
    sender.unlink()
    (tmp_path / "forged-info").write_bytes(b"Fforged@example.net\0")
    sender.symlink_to(tmp_path / "forged-info")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "3.host").symlink_to(shadow)
    linked = tmp_path / "Linked"
    for sub in ("cur", "tmp"):
        (linked / sub).mkdir(parents=True)
    (linked / "new").symlink_to(other)
    out = replay("--json", str(maildir), str(queue), str(linked))
    found, summary = records(out)
    by_source = {r["source"]: r for r in found}
    assert by_source[f"{maildir}/new/1.host"]["verdict"] == "skipped"
    assert by_source[f"{maildir}/new/1.host"]["reason"] == "a symbolic link: not followed"
    assert by_source[f"{maildir}/cur/2.host:2,S"]["verdict"] == "accept"
    assert by_source[f"{queue}/mess/{split}/1000007"]["verdict"] == "skipped"
    first = by_source[f"{queue}/mess/{1_000_000 % 23}/1000000"]
    assert first["verdict"] == "accept"
    assert first["derived"].startswith("envelope from headers")  # the linked info/ not read
    # Linked/new is a link: Linked is no maildir, and nothing under it is read but files
    assert [r["source"] for r in found if r["source"].startswith(str(linked))] == [f"{linked}/new"]
    assert by_source[f"{linked}/new"]["reason"] == "a symbolic link: not followed"
    assert summary["verdicts"] == {"accept": 2, "skipped": 3}
    assert out.returncode == 1
    assert "Traceback" not in out.stderr


def test_fifos_and_devices_are_skipped_never_waited_on(tmp_path):
    """A FIFO (in a queue's mess/ or info/, a maildir, beside a message as its .env, or
    named on the command line) and a device are not read: the run ends, and says why."""
    queue = make_queue(tmp_path, [(CLEAN, b"a@example.com", [b"b@example.org"])] * 3)
    first, second = str(1_000_000 % 23), str(1_000_007 % 23)
    os.unlink(queue / "mess" / first / "1000000")
    os.mkfifo(queue / "mess" / first / "1000000")
    os.unlink(queue / "info" / second / "1000007")
    os.mkfifo(queue / "info" / second / "1000007")
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    os.mkfifo(maildir / "new" / "1.host")
    files = tmp_path / "files"
    files.mkdir()
    (files / "m.eml").write_bytes(CLEAN)
    os.mkfifo(files / "m.env")
    os.mkfifo(tmp_path / "named-fifo")
    out = replay(
        "--json", str(queue), str(maildir), str(files), str(tmp_path / "named-fifo"), "/dev/zero"
    )
    found, _ = records(out)
    why = {r["source"]: (r["verdict"], r["reason"]) for r in found}
    fifo = ("skipped", "not a regular file (a FIFO)")
    assert why[f"{queue}/mess/{first}/1000000"] == fifo
    assert why[f"{queue}/mess/{second}/1000007"][0] == "accept"  # its envelope from headers
    assert why[f"{maildir}/new/1.host"] == fifo
    assert why[f"{files}/m.eml"][0] == "accept"
    assert why[str(tmp_path / "named-fifo")] == fifo
    assert why["/dev/zero"] == ("skipped", "not a regular file (a character device)")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr


def test_a_message_over_the_size_limit_is_skipped_unread(tmp_path):
    """--max-size, else 64 MiB: nothing past it is read (a link to /dev/zero is never read
    at all, above; a large file is skipped by its size). Past QQF_MAXSIZE a message is
    replayed, and refused by the size check as the QMAILQUEUE program refuses it."""
    (tmp_path / "big.eml").write_bytes(CLEAN + b"x" * 5000)
    (tmp_path / "small.eml").write_bytes(CLEAN)
    mbox = tmp_path / "box.mbox"
    mbox.write_bytes(b"From a\n" + CLEAN + b"From b\n" + CLEAN + b"y" * 5000 + b"\n")
    out = replay("--json", "--max-size", "1000", str(tmp_path))
    found, summary = records(out)
    why = {Path(r["source"]).name: (r["verdict"], r["reason"]) for r in found}
    assert why["big.eml"] == (
        "skipped",
        f"{len(CLEAN) + 5000} bytes, over the limit of 1000 (--max-size)",
    )
    assert why["box.mbox:1"] == ("accept", "")
    assert why["box.mbox:2"][0] == "skipped"
    assert why["small.eml"] == ("accept", "")
    assert summary["verdicts"] == {"accept": 2, "skipped": 2}
    assert out.returncode == 1
    out = replay("--json", str(tmp_path / "big.eml"), env={"QQF_MAXSIZE": "2000"})
    (record,), _ = records(out)
    assert (record["verdict"], record["check"], record["code"]) == ("reject", "size", 31)
    assert record["reason"] == f"message is {len(CLEAN) + 5000} bytes, over the limit of 2000"
    out = replay("--max-size", "0", str(tmp_path))
    assert out.returncode == 2 and "must be 1 or more" in out.stderr


def test_a_huge_mbox_is_streamed_in_bounded_memory(tmp_path):
    """300,000 messages (the finding: 722 MB for a million): records are written as they
    come and counted, never kept; most are over the limit (cheap), every 100th replayed."""
    count = 300_000
    small, large = b"From a\nhi\n", b"From b\n" + b"x" * 40 + b"\n"
    mbox = tmp_path / "huge.mbox"
    with open(mbox, "wb") as stream:
        for _ in range(count // 100):
            stream.write(small + large * 99)
    out_file = tmp_path / "out"
    peak = tmp_path / "peak"
    with open(out_file, "wb") as stdout:
        done = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("peak_rss.py")),
                QQFILTER,
                "replay",
                "--json",
                "--max-size",
                "20",
                str(mbox),
            ],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env={
                "PATH": "/usr/bin:/bin",
                "QQF_CONFIG": "/dev/null",
                "PEAK_RSS_FILE": str(peak),
            },
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    with open(out_file, "rb") as stream:
        stream.seek(-4096, os.SEEK_END)
        summary = json.loads(stream.read().splitlines()[-1])["summary"]
    assert summary["verdicts"] == {"accept": count // 100, "skipped": count - count // 100}
    assert int(peak.read_text()) < 64 * 1024, peak.read_text()


def test_a_directory_tree_of_any_depth_is_walked_without_recursion(tmp_path):
    """700 levels (a path of 1,400 bytes): Python's stack would end at about 500."""
    deep = tmp_path.joinpath(*["d"] * 700)
    deep.mkdir(parents=True)
    (deep / "m.eml").write_bytes(CLEAN)
    (tmp_path / "d" / "shallow.eml").write_bytes(CLEAN)
    out = replay("--json", str(tmp_path / "d"))
    assert "Traceback" not in out.stderr
    found, _ = records(out)
    assert [(Path(r["source"]).name, r["verdict"]) for r in found] == [
        ("m.eml", "accept"),
        ("shallow.eml", "accept"),
    ]
    assert out.returncode == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.lists(st.sampled_from([b"From ", b"\n", b"x", b"From x\n", b"\r\n", b">From "])).map(
        b"".join
    ),
    window=st.integers(1, 40),
    from_line=st.integers(1, 12),
)
def test_the_mbox_split_is_one_message_a_from_line_in_any_window(body, window, from_line):
    """However the file is read (window sizes), each ``From `` at a line start begins one
    message, and the messages' bytes lie in order inside the file, none overlapping."""
    import tempfile

    from qqfilter.tools.replay import sources

    data = b"From " + body
    starts = [0] + [i + 1 for i in range(len(data)) if data.startswith(b"\nFrom ", i)]
    reference = []
    for start, end in zip(starts, [*starts[1:], len(data)], strict=True):
        newline = data.find(b"\n", start, start + from_line)
        offset = end if newline < 0 else min(newline + 1, end)
        reference.append((offset, end - offset))
    with tempfile.NamedTemporaryFile() as named:
        named.write(data)
        named.flush()
        with (
            mock.patch.object(sources, "FROM_LINE", from_line),
            mock.patch.object(sources, "WINDOW", window),
        ):
            found = [(item.offset, item.length) for item in sources._mbox(Path(named.name), False)]
    assert found == reference
    assert len(found) == data.count(b"\nFrom ") + 1
    end = 0
    for offset, length in found:
        assert end <= offset and length >= 0
        end = offset + length
    assert end == len(data)

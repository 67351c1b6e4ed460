"""qqfilter behind the real qmail: notqmail's qmail-smtpd in front, its qmail-queue behind.

Everything else in the suite stands in for qmail (tests/fake_qmail_queue.py); here an SMTP
client talks to the real ``qmail-smtpd`` (built once from ../shared/vendor by
tests/realqmail.py), whose QMAILQUEUE is the wrapper ``qqfilter install-wrapper`` writes, and an
accepted message is handed to the real setuid ``qmail-queue``, which writes it into the real
queue. So what is asserted is what a sender and a mailbox would see: the SMTP answer to the
message (docs/exit-codes.md's, with and without notqmail's fd 6 custom reply), the bytes of
the queue's mess/ file and its envelope, and that nothing is queued when the answer is not 250.

Each test runs one-shot and through a ``qqfilter serve`` (no fallback: a server problem fails
the test). One qmail home serves the whole run; each test holds its queue (another run
waits) and starts with an empty one.
"""

import io
import os
import pwd
import re
import shlex
import subprocess
import zipfile
from base64 import encodebytes
from collections.abc import Iterator
from pathlib import Path

import pytest
import realqmail
from conftest import QQFILTER

ME = "mx.example.org"
SENDER = b"alice@example.com"
RCPT = b"postmaster@" + ME.encode()
DATE = rb"\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000"
QQ_RECEIVED = rb"Received: \(qmail (\d+) invoked by uid %d\); " % os.getuid() + DATE + rb"\n"
"""qmail-queue's line, at the top of every message it queues: qmail-smtpd runs as ourselves
(root in CI), not qmaild, so the queue program can be a wrapper under the project."""
SMTPD_RECEIVED = (
    rb"Received: from unknown \(HELO client\.example\) \(192\.0\.2\.1\)\n"
    rb"  by " + re.escape(ME.encode()) + rb" with SMTP; " + DATE + rb"\n"
)
"""qmail-smtpd's line, above the message it hands to its queue program."""

PERMANENT = "554 mail server permanently rejected message (#5.3.0)"
TEMPORARY = "451 mail server temporarily rejected message (#4.3.0)"

PLAIN = (
    b"From: Alice <alice@example.com>\n"
    b"To: postmaster@mx.example.org\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= and a long header line that goes on and on and on, "
    b"well past the seventy-eight characters a line ought to have\n"
    b"Message-ID: <real-qmail-1@example.com>\n"
    b"\n"
    b".a line that starts with a dot (stuffed on the wire, one dot in the queue)\n"
    b"..and one with two\n"
    b"8-bit: caf\xc3\xa9, a lone CR here:\r<- and a tab\tend\n"
    b"\n"
    b"-- \n"
    b"Alice\n"
)


def zip_with(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


EXE_IN_ZIP = (
    b"From: alice@example.com\n"
    b"Subject: your invoice\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b1"\n'
    b"\n"
    b"--b1\n"
    b"Content-Type: text/plain\n"
    b"\n"
    b"See the attachment.\n"
    b"--b1\n"
    b'Content-Type: application/zip; name="invoice.zip"\n'
    b"Content-Transfer-Encoding: base64\n"
    b'Content-Disposition: attachment; filename="invoice.zip"\n'
    b"\n" + encodebytes(zip_with("invoice.exe", b"MZ\x90\x00" + b"\0" * 60)) + b"--b1--\n"
)


# --- the world: one built qmail, one wrapper, a queue per test ------------------------------


@pytest.fixture(scope="session")
def qmail_build() -> Path:
    """The real qmail's home, built once (cached between runs: tests/realqmail.py)."""
    try:
        return realqmail.qmail_home()
    except realqmail.Unavailable as exc:
        pytest.skip(f"no real qmail: {exc}")


@pytest.fixture(scope="session")
def wrapper(tmp_path_factory) -> str:
    """The QMAILQUEUE program, as install.sh --qmail writes it."""
    path = tmp_path_factory.mktemp("wrapper") / "qqfilter"
    proc = subprocess.run(
        [QQFILTER, "install-wrapper", "--user", pwd.getpwuid(os.geteuid()).pw_name, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return str(path)


@pytest.fixture
def home(qmail_build):
    """The qmail home, this test's alone: control files as ``config-fast mx.example.org``
    writes them, an empty queue."""
    with realqmail.exclusive(qmail_build):
        realqmail.config(qmail_build, ME)
        realqmail.empty_queue(qmail_build)
        yield qmail_build
        realqmail.empty_queue(qmail_build)


@pytest.fixture(params=["one-shot", "resident"])
def mode(request) -> dict[str, str]:
    """The environment that picks the mode: nothing, or the session's server, no fallback."""
    if request.param == "one-shot":
        return {}
    server = request.getfixturevalue("resident_server")
    return {"QQF_SOCKET": server.socket, "QQF_SOCKETFALLBACK": "tempfail"}


class Mail:
    """Send a message through qmail-smtpd with qqfilter as QMAILQUEUE; ``settings`` are the
    environment a tcp rules line would add."""

    def __init__(self, home: Path, wrapper: str, mode: dict[str, str], tmp: Path) -> None:
        self.home = home
        self.wrapper = wrapper
        self.spool = tmp / "spool"
        self.spool.mkdir()
        config = tmp / "empty.toml"
        config.write_text("")
        self.env = {
            "TCPREMOTEIP": "192.0.2.1",
            "TCPLOCALHOST": ME,
            "QQF_CONFIG": str(config),
            "QQF_QMAILQUEUE": str(home / "bin" / "qmail-queue"),
            "QQF_QMAILHOME": str(home),
            "QQF_SPOOLDIR": str(self.spool),
            **mode,
        }

    def send(
        self, message: bytes, recipients: tuple[bytes, ...] = (RCPT,), **settings: str
    ) -> realqmail.Session:
        session = realqmail.smtp_session(
            self.home,
            {**self.env, **settings},
            message,
            SENDER,
            recipients,
            qmailqueue=self.wrapper,
        )
        assert session.returncode == 0, session.stderr
        for recipient in recipients:
            assert session.replies[f"rcpt {recipient.decode()}"] == (250, "ok")
        return session


@pytest.fixture
def mail(home, wrapper, mode, tmp_path) -> Iterator[Mail]:
    sender = Mail(home, wrapper, mode, tmp_path)
    yield sender
    assert not any(sender.spool.iterdir()), "a file was left in the spool directory"


def log_line(session: realqmail.Session) -> dict[str, str]:
    """qqfilter's one log line (qmail-smtpd's stderr is its queue program's) as fields."""
    (line,) = session.log
    assert line.startswith("qqfilter: "), line
    assert "fallback=" not in line, line
    return dict(part.partition("=")[::2] for part in shlex.split(line)[1:])


def accepted_qp(session: realqmail.Session) -> int:
    """The qp of qmail-smtpd's ``250 ok <time> qp <pid>``: the queue program's pid."""
    code, text = session.data
    found = re.fullmatch(r"ok \d+ qp (\d+)", text)
    assert code == 250 and found, session.data
    return int(found.group(1))


class Layers:
    """A queued message taken apart: qmail-queue's pid (its Received line), the header fields
    qqfilter put above qmail-smtpd's Received line, the message as the client sent it, and
    ``handed``: what qmail-smtpd gave its queue program (its Received line and the message)."""

    def __init__(self, queued: bytes) -> None:
        top = re.match(QQ_RECEIVED, queued)
        assert top, queued[:500]
        self.pid = int(top.group(1))
        self.handed = queued[top.end() :]
        smtpd = re.search(b"^" + SMTPD_RECEIVED, queued, re.M)
        assert smtpd, queued[:500]
        self.stamped = queued[top.end() : smtpd.start()]
        self.message = queued[smtpd.end() :]


# --- accepted mail -------------------------------------------------------------------------------


LARGE = (
    b"From: alice@example.com\nSubject: a large report\nMIME-Version: 1.0\n"
    b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
    + encodebytes(bytes(range(256)) * 12_000)
)
"""3 MB of base64: more than any pipe or socket buffer between the programs holds."""


@pytest.mark.parametrize("message", [PLAIN, LARGE], ids=["small", "large"])
def test_clean_mail_is_queued_byte_identical_with_its_envelope(mail, home, message):
    recipients = (RCPT, b"root@" + ME.encode())
    session = mail.send(message, recipients, QQF_RCPTCHECK="any")

    qp = accepted_qp(session)
    (queued,) = realqmail.queued(home)
    layers = Layers(queued.message)
    assert layers.message == message
    assert layers.stamped == b""
    assert queued.sender == SENDER
    assert queued.recipients == list(recipients)
    # qqfilter became qmail-queue (exec, no fork): one pid in the reply, the queue and the log
    assert layers.pid == queued.pid == qp
    fields = log_line(session)
    assert fields["verdict"] == "accept"
    assert int(fields["pid"]) == qp
    assert int(fields["size"]) == len(layers.handed)


def test_headers_qqfilter_adds_go_below_qmail_queues_received_line(mail, home):
    """A scanner that cannot be reached, with QQF_SCANERROR=accept: queued, marked."""
    session = mail.send(PLAIN, QQF_CLAMD=f"unix:{home}/no-clamd.sock", QQF_SCANERROR="accept")

    qp = accepted_qp(session)
    (queued,) = realqmail.queued(home)
    layers = Layers(queued.message)
    assert layers.stamped == b"X-Virus-Status: Unscanned (clamd could not decide)\n"
    assert layers.message == PLAIN
    assert layers.pid == queued.pid == qp
    assert log_line(session)["check"] == "clamd"


def test_mail_at_qmails_databytes_is_queued_not_refused_by_the_size_check(mail, home):
    """qmail-smtpd counts without its Received line, and so must qqfilter's DATABYTES."""
    session = mail.send(PLAIN, DATABYTES=str(len(PLAIN)))

    accepted_qp(session)
    (queued,) = realqmail.queued(home)
    assert Layers(queued.message).message == PLAIN


# --- refused mail: the reply of docs/exit-codes.md, nothing queued -----------------------------


REFUSALS = {  # kind: (message, recipients, settings, the plain reply, the custom one's status)
    "size": (PLAIN, (RCPT,), {"QQF_MAXSIZE": "100"}, PERMANENT, "5.3.4"),
    "attachment": (EXE_IN_ZIP, (RCPT,), {}, PERMANENT, "5.7.1"),
    "recipient": (PLAIN, (b"ghost@" + ME.encode(),), {"QQF_RCPTCHECK": "any"}, PERMANENT, "5.1.1"),
    "scanner down": (
        PLAIN,
        (RCPT,),
        {"QQF_CLAMD": "unix:/nonexistent/clamd.sock"},
        TEMPORARY,
        "4.3.0",
    ),
}


@pytest.mark.parametrize("kind", REFUSALS)
def test_a_refusal_gives_the_documented_reply_and_queues_nothing(mail, home, kind):
    message, recipients, settings, reply, _ = REFUSALS[kind]
    session = mail.send(message, recipients, **settings)

    assert session.reply == reply
    assert realqmail.queue_files(home) == []
    fields = log_line(session)
    assert fields["code"] == ("31" if reply.startswith("5") else "71")
    assert fields["verdict"] == ("reject" if reply.startswith("5") else "tempfail")


@pytest.mark.parametrize("kind", REFUSALS)
def test_with_the_reply_pipe_on_fd_6_the_client_reads_the_reason(mail, home, kind):
    """notqmail reads a custom reply from fd 6 when its queue program exits 82."""
    message, recipients, settings, reply, status = REFUSALS[kind]
    session = mail.send(message, recipients, QQF_ERRFD="6", **settings)

    fields = log_line(session)
    assert fields["code"] == "82"
    assert session.reply == f"{reply[:3]} {fields['reason']} (#{status})"
    assert realqmail.queue_files(home) == []


def test_the_reply_pipe_of_simscans_patch_fd_4_is_not_used_on_notqmail(mail, home):
    """fd 4 is closed in notqmail's queue program: the plain code, never a lost text."""
    session = mail.send(PLAIN, QQF_MAXSIZE="100", QQF_ERRFD="4")

    assert session.reply == PERMANENT
    assert log_line(session)["code"] == "31"


def test_sqmails_attachment_code_is_qmails_permanent_problem(mail, home):
    session = mail.send(EXE_IN_ZIP, QQF_CODES="sqmail")

    assert session.reply == "554 qq permanent problem (#5.3.0)"
    assert log_line(session)["code"] == "34"
    assert realqmail.queue_files(home) == []


def test_mail_over_qmails_databytes_gets_qmails_own_answer(mail, home):
    """qmail-smtpd stops passing the message on and never sends the envelope: qqfilter
    exits 54, qmail-smtpd answers its own 552."""
    session = mail.send(PLAIN, DATABYTES=str(len(PLAIN) - 1))

    assert session.reply == "552 sorry, that message size exceeds my databytes limit (#5.3.4)"
    assert realqmail.queue_files(home) == []
    fields = log_line(session)
    assert (fields["verdict"], fields["code"]) == ("error", "54")  # no envelope: read error
    assert fields["reason"] == "envelope: empty, the client gave up"

"""Recipient validation on a vpopmail host: a qmail home laid out as vpopmail lays it out
(vadddomain's virtualdomains and users/assign lines, a domain directory with vpasswd,
vpasswd.cdb and a .qmail-default running vdelivermail), judged through the real program."""

import os
import time
from pathlib import Path

import cdblib
import pytest
from conftest import assert_clean_failure, envelope
from test_recipients import qmail_newu

from qqfilter.checks.recipients import vpopmail

BOTH_MODES = True  # every qq test runs one-shot and through qqfilter serve

MESSAGE = b"Subject: hello\n\nhi\n"
VDELIVERMAIL = "| /home/vpopmail/bin/vdelivermail ''"

# user:pwhash:uid:gid(flags):gecos:dir:quota:clear (the flags 16 = BOUNCE_MAIL: locked)
USERS = [
    "postmaster:$1$x$y:1:0:Postmaster:@DIR@/postmaster:NOQUOTA:pw",
    "joe:$1$x$y:1:0:Joe:@DIR@/j/joe:NOQUOTA:pw",
    "ann.lee:$1$x$y:1:0:Ann:@DIR@/ann.lee:5000000S:pw",
    "locked:$1$x$y:1:16:Locked out:@DIR@/locked:NOQUOTA:pw",
]

# domain: (the last vdelivermail argument, how the users are kept)
DOMAINS = {
    "example.com": ("bounce-no-mailbox", "both"),  # vpasswd.cdb wins over a stale vpasswd
    "catchall.example": ("catchall@example.com", "cdb"),
    "maildir.example": ("/home/vpopmail/domains/maildir.example/postmaster", "cdb"),
    "deleting.example": ("delete", "cdb"),
    "text.example": ("bounce-no-mailbox", "text"),  # vpasswd only: vpopmail builds the cdb
    "sql.example": ("bounce-no-mailbox", "none"),  # users in MySQL: no vpasswd files here
}


def vpasswd_cdb(path: Path, lines: list[str]) -> None:
    """vpasswd.cdb as vpopmail's make_vpasswd_cdb writes it: the name, the rest of the line."""
    with open(path, "wb") as stream, cdblib.Writer(stream) as writer:
        for line in lines:
            name, _, rest = line.partition(":")
            writer.put(name.encode(), rest.encode())


@pytest.fixture(params=["cdb", "assign"])
def home(qq, request) -> Path:
    """A vpopmail host's qmail home as qq's QQF_QMAILHOME, its domains under domains/."""
    target = qq.tmp / "qmail"
    (target / "control").mkdir(parents=True)
    (target / "users").mkdir()
    (target / "control" / "me").write_text("mx.example\n")
    (target / "control" / "locals").write_text("mx.example\nlocalhost\n")
    virtual, assign = [], []
    for domain, (last, kept) in DOMAINS.items():
        directory = target / "domains" / domain
        directory.mkdir(parents=True)
        virtual.append(f"{domain}:{domain}")
        assign.append(f"+{domain}-:{domain}:89:89:{directory}:-::")
        (directory / ".qmail-default").write_text(f"{VDELIVERMAIL} {last}\n")
        lines = [line.replace("@DIR@", str(directory)) for line in USERS]
        if kept in ("text", "both"):
            stale = ["stale:$1$x$y:1:0:Removed since:/x:NOQUOTA:pw"] if kept == "both" else []
            (directory / "vpasswd").write_text("".join(f"{line}\n" for line in lines + stale))
        if kept in ("cdb", "both"):
            fresh = ["fresh:$1$x$y:1:0:Added since:/x:NOQUOTA:pw"] if kept == "both" else []
            vpasswd_cdb(directory / "vpasswd.cdb", lines + fresh)
    base = target / "domains" / "example.com"
    # vaddaliasdomain alias.example example.com: its own entries, the real domain's directory
    virtual.append("alias.example:alias.example")
    assign.append(f"+alias.example-:example.com:89:89:{base}:-::")
    # by hand: another domain sent to example.com's prefix, without an assign entry of its own
    virtual.append("other.example:example.com")
    # valiases: .qmail files in the domain's directory, which qmail-local finds first
    (base / ".qmail-info").write_text("&joe@example.com\n")
    (base / ".qmail-sales-default").write_text("&joe@example.com\n")
    (target / "control" / "virtualdomains").write_text("\n".join(virtual) + "\n")
    (target / "users" / "assign").write_text("\n".join(assign) + "\n.\n")
    if request.param == "cdb":
        qmail_newu(target)
        (target / "users" / "assign").write_text("+:nobody:1:1:/nonexistent:-::\n.\n")
    return target


def submit(qq, *recipients: bytes, **env: str):
    settings = {"QQF_RCPTCHECK": "any", **env}
    return qq.submit(MESSAGE, envelope(b"alice@sender.example", *recipients), env=settings)


@pytest.mark.parametrize(
    "address",
    [
        b"joe@example.com",  # in vpasswd.cdb
        b"JOE@Example.COM",  # vdelivermail lower-cases
        b"ann.lee@example.com",  # a dot in the name (the .qmail search reads it as ':')
        b"joe-lists@example.com",  # user-ext: the user before the first '-' (qmail-ext)
        b"joe-a-b@example.com",
        b"fresh@example.com",  # only in vpasswd.cdb: vdelivermail reads the cdb
        b"info@example.com",  # a valias: .qmail-info in the domain's directory
        b"sales-eu@example.com",  # .qmail-sales-default
        b"joe@alias.example",  # vaddaliasdomain: the real domain's users
        b"anyone@catchall.example",  # no such user: vdelivermail forwards to the catch-all
        b"anyone@maildir.example",  # or delivers to a catch-all directory
        b"joe@deleting.example",
        b"ann.lee@text.example",  # vpasswd without vpasswd.cdb
        b"ann.lee-x@text.example",
    ],
)
@pytest.mark.one_shot  # vdelivermail's rules are read the same way in both modes
def test_vpopmail_mailboxes_exist(qq, home, address):
    out = submit(qq, address)
    assert out.returncode == 0, out.stderr
    assert out.queued
    assert out.field("notes") is None, out.stderr


@pytest.mark.parametrize(
    "address",
    [
        b"ghost@example.com",  # not in vpasswd.cdb, no .qmail-ghost: bounce-no-mailbox
        b"ghost-joe@example.com",  # neither ghost-joe nor ghost is a user
        b"stale@example.com",  # only in the stale vpasswd: vdelivermail reads the cdb
        b"locked@example.com",  # a locked account (BOUNCE_MAIL): vdelivermail bounces
        b"ghost@alias.example",
        b"ghost@deleting.example",  # "delete" loses the mail silently: refused instead
        b"ghost@text.example",
        b"bad%name@example.com",  # a name vdelivermail calls invalid: it bounces
        b"bad%name@catchall.example",  # before the catch-all is looked at
    ],
)
@pytest.mark.one_shot  # vdelivermail's rules are read the same way in both modes
def test_unknown_vpopmail_users_are_refused(qq, home, address):
    out = submit(qq, address)
    assert_clean_failure(out, 31)
    assert out.field("tag") == "Reject::RCPT::Failed_Rcptto"
    assert out.field("reason") == "no mailbox here by that name"
    assert out.field("detail") == f"1 of 1 recipients unknown: <{address.decode()}>"


def test_users_kept_in_sql_are_not_judged_and_the_log_says_so(qq, home):
    note = "not judged: sql.example: no vpasswd files (vpopmail with an SQL or LDAP back-end)"
    out = submit(qq, b"ghost@sql.example")
    assert out.returncode == 0, out.stderr
    assert out.field("notes") == f"recipients: {note}"
    out = submit(qq, b"ghost@example.com", b"ghost@sql.example")
    assert_clean_failure(out, 31)
    assert out.field("detail") == f"1 of 2 recipients unknown: <ghost@example.com>; {note}"
    out = submit(qq, b"joe@example.com", b"ghost@example.com", QQF_RCPTCHECK="all")
    assert out.returncode == 0, out.stderr


def test_a_domain_without_an_assign_entry_of_its_own_is_not_judged(qq, home):
    """virtualdomains sends other.example to example.com's directory, but vdelivermail looks
    the domain up by its own name (vget_assign) and finds none: qmail decides at delivery."""
    out = submit(qq, b"ghost@other.example")
    assert out.returncode == 0, out.stderr
    assert "other.example: vdelivermail without a users/assign entry" in out.field("notes")


@pytest.mark.parametrize("home", ["cdb"], indirect=True)
@pytest.mark.parametrize("cut", ["empty", "in the header", "in the tables", "garbage"])
def test_a_damaged_vpasswd_cdb_is_a_configuration_error(qq, home, cut):
    """As a damaged users/cdb: 55 and one log line naming the file, not a refusal."""
    path = home / "domains" / "example.com" / "vpasswd.cdb"
    data = path.read_bytes()
    damaged = {
        "empty": b"",
        "in the header": data[:1000],
        "in the tables": data[:-9],
        "garbage": b"\xff" * len(data),
    }[cut]
    path.write_bytes(damaged)
    out = submit(qq, b"joe@example.com")
    assert_clean_failure(out, 55)
    assert out.field("reason").startswith(f"vpasswd.cdb: {path} is damaged: "), out.stderr
    assert submit(qq, b"joe@text.example").returncode == 0  # other domains are not read


@pytest.mark.parametrize("home", ["cdb"], indirect=True)
def test_a_vpasswd_cdb_others_may_write_is_not_believed(qq, home):
    path = home / "domains" / "example.com" / "vpasswd.cdb"
    path.chmod(0o666)
    out = submit(qq, b"ghost@example.com")
    assert_clean_failure(out, 55)
    assert out.field("reason") == (
        f"vpasswd.cdb: {path} is writable by users other than its owner: refused (chmod go-w)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
@pytest.mark.parametrize("home", ["cdb"], indirect=True)
def test_a_vpasswd_cdb_qqfilter_may_not_read_is_not_judged(qq, home):
    path = home / "domains" / "example.com" / "vpasswd.cdb"
    path.chmod(0)
    out = submit(qq, b"ghost@example.com")
    assert out.returncode == 0, out.stderr
    assert f"cannot read {path}" in out.field("notes")


@pytest.mark.parametrize("home", ["cdb"], indirect=True)
def test_many_vpopmail_recipients_are_quick(qq, home):
    """1,000 unknown names, each looked up twice (the name, the part before its first '-'),
    read by lookup from vpasswd.cdb; the .qmail-default read once."""
    recipients = [f"ghost{i}-x@example.com".encode() for i in range(1000)]
    started = time.monotonic()
    out = submit(qq, *recipients)
    assert time.monotonic() - started < 2
    assert_clean_failure(out, 31)
    assert out.field("detail").startswith("1000 of 1000 recipients unknown")


@pytest.mark.parametrize(
    ("text", "last"),
    [
        (b"| /home/vpopmail/bin/vdelivermail '' bounce-no-mailbox\n", "bounce-no-mailbox"),
        (b"|/home/vpopmail/bin/vdelivermail '' delete", "delete"),
        (b'# vpopmail\n| vdelivermail "" "postmaster@example.com"\n', "postmaster@example.com"),
        (b"| /var/qmail/bin/preline /home/vpopmail/bin/vdelivermail '' x@y\n", "x@y"),
        (b"&joe@example.com\n", None),  # a forward
        (b"./Maildir/\n", None),
        (b"", None),  # qmail-local's default delivery
        (b"| vdelivermail '' bounce-no-mailbox\n&copy@example.com\n", None),  # two deliveries
        (b"| vdelivermail bounce-no-mailbox\n", None),  # vdelivermail defers ("syntax")
        (b"| vdelivermail '' bounce-no-mailbox; true\n", None),  # more than one command
        (b"| vdelivermail '' $CATCHALL\n", None),  # the shell decides
        (b"| vdelivermail '' 'bounce-no-mailbox\n", None),  # unterminated quote
        (b"| maildrop /etc/mailfilter\n", None),
        (b"| vdelivermail '' bounce-no-mailbox\n" + b"#" * 5000, None),  # longer than it reads
    ],
)
def test_the_qmail_default_is_read_as_the_shell_reads_it(text, last):
    assert vpopmail.vdelivermail(text) == last

"""vpopmail's domains read back: when the ``.qmail`` file qmail-local picks runs vdelivermail,
does vdelivermail have a mailbox for the address? Read from vpopmail's own files, without its
library, the way vdelivermail (vdelivermail.c, the cdb back-end's vauth_getpw in vcdb.c and
vget_assign in vpopmail.c) finds them:

- The ``.qmail`` file's one delivery is ``| .../vdelivermail '' LAST`` (``preline`` before
  it is allowed); anything else, or a line the shell would read in another way, is not
  vdelivermail's, and qmail-local's answer stands (the file exists).
- The user is qmail-local's extension (``EXT``), lower-cased and cut at 156 characters
  (``lowerit``); a name with a character ``is_username_valid`` refuses bounces.
- The domain's directory is the users/cdb entry ``!HOST-`` (vget_assign), HOST being the
  address's own domain: vaddaliasdomain's aliases have an entry of their own pointing at the
  real domain's directory. Without one, vdelivermail finds no user at all; that setup is not
  judged (it is not one vpopmail makes).
- The user list is the directory's ``vpasswd.cdb`` (keyed by user name); only where it does
  not exist ``vpasswd``, from which vauth_getpw would build it. Neither: vpopmail keeps its
  users in SQL or LDAP, which qqfilter does not read: not judged, with a note.
- vdelivermail looks the user up, then (built with --enable-qmail-ext) the part before the
  first ``-``. Both are tried here whatever the build, so ``user-anything`` is never refused
  for an existing user. A user found whose flags (the gid field) hold BOUNCE_MAIL bounces.
- No user: LAST ``bounce-no-mailbox`` bounces, ``delete`` drops the mail silently, anything
  else (an address, a directory) is a catch-all that takes it. Both bounce and delete are
  NO_MAILBOX here: nobody reads mail to a name that is not there, and a sender told so at
  once can correct the address.

vpopmail's valiases (without SQL) are ``.qmail-alias`` files in the domain's directory, which
qmail-local finds before it runs vdelivermail (mailboxes.py). The cost is bounded: a ``.qmail``
file is read once per message and only its first DOT_QMAIL_MAX bytes, each address costs at
most two user lookups (``pread``s of vpasswd.cdb, as users/cdb is read), a message opens at
most DOMAINS_MAX domains, and a ``vpasswd`` without its cdb is read at most TEXT_MAX bytes
per message.
"""

import contextlib
import os
import stat

from qqfilter.checks.recipients import mailboxes
from qqfilter.exitcodes import CONFIG_ERROR, QueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

BOUNCE = "bounce-no-mailbox"
DELETE = "delete"
BOUNCE_MAIL = 0x10
"""The vpasswd gid-field flag of a locked account: vdelivermail bounces its mail."""
USER_MAX = 156
"""vpopmail's lowerit() cuts a name at this length before it is looked up."""
DOT_QMAIL_MAX = 4096
"""A longer ``.qmail`` file is not read as vdelivermail's (one short line is)."""
DOMAINS_MAX = 32
"""vpopmail domains judged in one message; the rest are not judged."""
TEXT_MAX = 16 << 20
"""Bytes of ``vpasswd`` (where vpasswd.cdb is missing) read per message, all domains."""
LINE_MAX = 4096
"""A vpasswd line is read in pieces of this size at most (vpopmail's own are far shorter)."""
NOTES_MAX = 3
CDB_FIX = "rebuild it from vpasswd (vpopmail makes it again when it is removed)"

_VALID = frozenset(
    chr(c)
    for c in (33, 35, 36, 38, 39, 42, 43, *range(45, 58), 61, 63, *range(65, 91), *range(94, 127))
)
"""The characters vpopmail's is_username_valid lets through."""
_SHELL = frozenset("$`\\;&|<>(){}[]*?~#=!\n\r")
"""Characters that give a shell command line a meaning beyond words and quotes."""


class Domains:
    """vpopmail's users for one message, domain by domain. Close it when done."""

    def __init__(self, users: "mailboxes._Users | None", notes: list[str]) -> None:
        self.users = users
        self.notes = notes
        self.actions: dict[str, str | None] = {}
        self.domains: dict[str, _Vpasswd | None] = {}
        self.text_left = TEXT_MAX

    def close(self) -> None:
        for found in self.domains.values():
            if found:
                found.close()
        self.domains.clear()

    def judge(self, path: str, extension: str, domain: str) -> str:
        """EXISTS, NO_MAILBOX or CANNOT_JUDGE for an address whose delivery qmail-local finds
        in the ``.qmail`` file ``path`` (which exists), with extension ``extension``."""
        if path in self.actions:
            last = self.actions[path]
        else:
            last = _action(path)
            mailboxes._remember(self.actions, path, last)
        if last is None:
            return mailboxes.EXISTS
        return self._vdelivermail(last, extension, domain)

    def _vdelivermail(self, last: str, extension: str, domain: str) -> str:
        user = extension[:USER_MAX]
        if any(char not in _VALID for char in user):
            return mailboxes.NO_MAILBOX  # "invalid username": vdelivermail exits 100
        user = user.lower()
        vpasswd = self._domain(domain)
        if vpasswd is None:
            return mailboxes.CANNOT_JUDGE
        flags = vpasswd.get(user)
        base = user.partition("-")[0]
        if flags is None and base != user:
            flags = vpasswd.get(base)
        if flags is not None:
            return mailboxes.NO_MAILBOX if flags & BOUNCE_MAIL else mailboxes.EXISTS
        return mailboxes.NO_MAILBOX if last in (BOUNCE, DELETE) else mailboxes.EXISTS

    def _domain(self, domain: str) -> "_Vpasswd | None":
        """The user list vdelivermail reads for ``domain``, or None (noted) when qqfilter
        cannot read one."""
        if domain in self.domains:
            return self.domains[domain]
        if len(self.domains) >= DOMAINS_MAX:
            self._note(f"more than {DOMAINS_MAX} vpopmail domains: the rest not judged")
            return None
        directory = self.users.domain_dir(domain) if self.users else None
        if directory is None:
            self._note(f"{domain}: vdelivermail without a users/assign entry of its own")
            found = None
        else:
            found = self._open(directory, domain)
        self.domains[domain] = found
        return found

    def _open(self, directory: str, domain: str) -> "_Vpasswd | None":
        path = os.path.join(directory, "vpasswd.cdb")
        fd = self._fd(path, domain)
        if fd is None:
            return None
        if fd >= 0:
            try:
                _trust(fd, path, directory)
                return _CdbVpasswd(mailboxes._Cdb(fd, path, "vpasswd.cdb", CDB_FIX))
            except BaseException:
                os.close(fd)
                raise
        path = os.path.join(directory, "vpasswd")
        fd = self._fd(path, domain)
        if fd is None:
            return None
        if fd < 0:
            self._note(f"{domain}: no vpasswd files (vpopmail with an SQL or LDAP back-end)")
            return None
        with os.fdopen(fd, "rb") as stream:
            _trust(fd, path, directory)
            size = os.fstat(fd).st_size
            if size > self.text_left:
                self._note(f"{domain}: vpasswd of {size} bytes without vpasswd.cdb: too big")
                return None
            self.text_left -= size
            return _TextVpasswd(stream, size)

    def _fd(self, path: str, domain: str) -> int | None:
        """An open descriptor of ``path``, -1 when it does not exist, None (noted) when it
        cannot be opened."""
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return -1
        except OSError as exc:
            self._note(f"{domain}: cannot read {path}: {exc.strerror or exc}")
            return None

    def _note(self, note: str) -> None:
        if note not in self.notes and len(self.notes) < NOTES_MAX:
            self.notes.append(note)


class _Vpasswd:
    def get(self, user: str) -> int | None:
        """The flags (gid field) of ``user``, or None when there is no such user."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _CdbVpasswd(_Vpasswd):
    """vpasswd.cdb: key the user name, data the rest of its vpasswd line
    (``pwhash:uid:gid:gecos:dir:quota...``)."""

    def __init__(self, cdb: "mailboxes._Cdb") -> None:
        self.cdb = cdb

    def get(self, user: str) -> int | None:
        data = self.cdb.get(user.encode("latin-1"))
        if data is None:
            return None
        fields = data.split(b":")
        return _atoi(fields[2]) if len(fields) > 2 else 0

    def close(self) -> None:
        self.cdb.close()


class _TextVpasswd(_Vpasswd):
    """vpasswd (``user:pwhash:uid:gid:...`` lines): the names and their flags, the first line
    of a name counting, as in the cdb vpopmail builds from it."""

    def __init__(self, stream: "BinaryIO", size: int) -> None:
        self.users: dict[bytes, int] = {}
        left = size  # no more than was measured (and budgeted), whatever is written meanwhile
        while left > 0:
            line = stream.readline(min(left, LINE_MAX))
            if not line:
                break
            left -= len(line)
            name, colon, rest = line.rstrip(b"\n").partition(b":")
            if colon and name not in self.users:
                fields = rest.split(b":", 3)
                self.users[name] = _atoi(fields[2]) if len(fields) > 2 else 0

    def get(self, user: str) -> int | None:
        return self.users.get(user.encode("latin-1"))


def _atoi(field: bytes) -> int:
    """C's atoi: leading digits (after blanks and a sign), else 0."""
    text = field.lstrip(b" \t")
    sign = -1 if text[:1] == b"-" else 1
    text = text[1:] if text[:1] in (b"-", b"+") else text
    digits = len(text) - len(text.lstrip(b"0123456789"))
    return sign * int(text[:digits]) if digits else 0


def _trust(fd: int, path: str, directory: str) -> None:
    """vpopmail's files may be believed when they are regular, written by their owner only,
    and owned by root, this user or the domain directory's owner (vpopmail); else 55, as for
    qmail's own files (qqfilter.control)."""
    status = os.fstat(fd)
    name = os.path.basename(path)
    if not stat.S_ISREG(status.st_mode):
        raise QueueError(CONFIG_ERROR, f"{name}: {path} is not a regular file: refused")
    owners = {0, os.geteuid()}
    with contextlib.suppress(OSError):
        owners.add(os.stat(directory).st_uid)
    why = ""
    if status.st_mode & 0o022:
        why = "is writable by users other than its owner: refused (chmod go-w)"
    elif status.st_uid not in owners:
        why = f"belongs to uid {status.st_uid}, not the domain's owner: refused"
    if why:
        raise QueueError(CONFIG_ERROR, f"{name}: {path} {why}")


def _action(path: str) -> str | None:
    """vdelivermail's last argument when the ``.qmail`` file's one delivery runs it, else
    None (also for a file qqfilter cannot read: qmail-local's answer stands)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = stream.read(DOT_QMAIL_MAX + 1)
    return vdelivermail(data)


def vdelivermail(data: bytes) -> str | None:
    """The last argument of the ``.qmail`` text ``data`` when its one delivery (``#`` lines
    are comments) is ``| [preline] .../vdelivermail ARG LAST``, else None."""
    if len(data) > DOT_QMAIL_MAX:
        return None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    deliveries = [line for line in lines if not line.startswith(b"#")]
    if len(deliveries) != 1 or not deliveries[0].startswith(b"|"):
        return None
    argv = _words(deliveries[0][1:].decode("latin-1"))
    if argv and os.path.basename(argv[0]) == "preline":
        argv = argv[1:]
    if not argv or len(argv) != 3 or os.path.basename(argv[0]) != "vdelivermail":
        return None  # another program, or vdelivermail's "invalid syntax" (it defers)
    return argv[2]


def _words(command: str) -> list[str] | None:
    """The words /bin/sh makes of ``command``, or None when it would do more than split
    words and remove quotes (variables, redirections, several commands, globs)."""
    if not _SHELL.isdisjoint(command):
        return None
    words: list[str] = []
    word: list[str] = []
    quote = ""
    started = False
    for char in command:
        if quote:
            if char == quote:
                quote = ""
            else:
                word.append(char)
        elif char in "'\"":
            quote = char
            started = True
        elif char in " \t":
            if started:
                words.append("".join(word))
                word, started = [], False
        else:
            word.append(char)
            started = True
    if quote:
        return None
    if started:
        words.append("".join(word))
    return words

"""Does this address have a mailbox here? Answered the way qmail itself would deliver it.

qmail-send makes ``local@domain`` local when the domain is in control/locals, or turns it
into ``prefix-local`` by control/virtualdomains. qmail-lspawn then looks the local part up in
users/cdb (built from users/assign): ``!local`` exactly, else ``!prefix`` for the longest
prefix ending in a wildcard character, giving a user, a home and an extension; without a
match qmail-getpw takes the longest system user at a ``-`` boundary, else the alias user with
the whole local part as extension. qmail-local then looks for ``.qmail-ext``, then
``.qmail-<ext with its last parts>-default``, then ``.qmail-default`` in the home; when none
exists for a non-empty extension, it bounces "no mailbox here by that name". When the file it
finds runs vpopmail's vdelivermail, vpopmail's own user list decides (vpopmail.py).

Each answer is EXISTS, NO_MAILBOX, or CANNOT_JUDGE (not our domain, a home we may not read,
a vpopmail domain whose users are in SQL): only NO_MAILBOX may ever refuse mail. Why a domain
was not judged, where the log should say it, is in ``notes``.

The cost of an address is bounded, since the envelope is the sender's to write: users/cdb is
read by lookup (a few ``pread``s, never the whole file; a damaged one is a configuration
error, as qmail-lspawn makes it a temporary one), system users are looked up only under
qmail-getpw's length limit, ``.qmail`` names only under the file-name limit, a local part
with more than MAX_BREAKS dashes (or wildcard characters) is not judged, and within a
message each lookup is made once (Mailboxes is made per message, so nothing goes stale).
"""

import os
import pwd
import struct

from qqfilter import control
from qqfilter.exitcodes import CONFIG_ERROR, QueueError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.checks.recipients import vpopmail

EXISTS = "exists"
NO_MAILBOX = "no mailbox"
CANNOT_JUDGE = "cannot judge"

MAX_BREAKS = 100
"""A local part with more dashes or users/cdb wildcard characters than this is not judged
(CANNOT_JUDGE: qmail decides at delivery, as without qqfilter). Each one is a place qmail
looks (a user, a wildcard entry, a ``.qmail-...-default``); RFC 5321's local parts (64
octets) never come near."""
GETPW_USERLEN = 32
"""qmail-getpw tries only user names shorter than this."""
NAME_MAX = 255
"""A longer ``.qmail`` file name cannot exist (qmail-local's open fails, not temporarily)."""
MEMO_MAX = 4096
"""Lookups remembered per message, each kind (then they are made again, never kept more)."""
CDB_VALUE_MAX = 65536
"""A users/cdb record longer than this is damage, not a user (six short fields)."""
SLOTS_READ = 8
"""users/cdb hash-table slots read at once (a table is half empty: most searches end in it)."""


class Mailboxes:
    """qmail's delivery data under ``qmailhome`` and an optional list file, for one message:
    every lookup made once (up to MEMO_MAX). Close it (or use it in ``with``) when done."""

    def __init__(self, qmailhome: str, listfile: str = "") -> None:
        self.home = qmailhome
        self.locals = {d.lower() for d in control.lines(qmailhome, "locals") or ()}
        if not self.locals:
            me = control.first_line(qmailhome, "me")
            self.locals = {me.lower()} if me else set()
        self.virtual: dict[str, str] = {}
        for line in control.lines(qmailhome, "virtualdomains") or ():
            key, _, prefix = line.partition(":")
            self.virtual[key.strip().lower()] = prefix.strip()
        self.listed, self.listed_domains = _list(listfile)
        self.users = _users(qmailhome)
        self.breaks = frozenset("-" + (self.users.wildchars if self.users else ""))
        self.judged: dict[str, str] = {}
        self.passwd: dict[str, str | None] = {}
        self.files: dict[str, str] = {}
        self.notes: list[str] = []
        self.vpopmail: vpopmail.Domains | None = None

    def __enter__(self) -> "Mailboxes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.vpopmail:
            self.vpopmail.close()
        if self.users:
            self.users.close()

    def judge(self, address: str) -> str:
        """EXISTS, NO_MAILBOX or CANNOT_JUDGE for the envelope address ``address``."""
        answer = self.judged.get(address)
        if answer is None:
            answer = self._judge(address)
            _remember(self.judged, address, answer)
        return answer

    def _judge(self, address: str) -> str:
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return CANNOT_JUDGE
        domain = domain.lower()
        if domain in self.listed_domains:
            return (
                EXISTS
                if (address.lower() in self.listed or f"@{domain}" in self.listed)
                else NO_MAILBOX
            )
        if domain in self.locals:
            return self._local(local, domain)
        prefix = self._virtual(local, domain)
        if prefix:
            return self._local(f"{prefix}-{local}", domain)
        return CANNOT_JUDGE

    def _virtual(self, local: str, domain: str) -> str:
        """The virtualdomains prefix for the address, "" when it is not a virtual one here."""
        for key in (f"{local.lower()}@{domain}", domain):
            if key in self.virtual:
                return self.virtual[key]
        parts = domain.split(".")
        for i in range(1, len(parts)):
            key = "." + ".".join(parts[i:])
            if key in self.virtual:
                return self.virtual[key]
        return self.virtual.get("", "")

    def _local(self, local: str, domain: str) -> str:
        if sum(local.count(char) for char in self.breaks) > MAX_BREAKS:
            return CANNOT_JUDGE
        found = self.users.lookup(local.lower()) if self.users else None
        if found is None:
            found = self._system_user(local) or (os.path.join(self.home, "alias"), "-", local)
        home, dash, extension = found
        if not extension:
            return EXISTS
        return self._dot_qmail(home, dash, extension, domain)

    def _system_user(self, local: str) -> tuple[str, str, str] | None:
        """qmail-getpw: the longest system user (not root, owning its home) at a ``-``
        boundary, among names shorter than GETPW_USERLEN, lower-cased."""
        cut = len(local)
        while cut > 0:
            if cut < GETPW_USERLEN:
                home = self._user_home(local[:cut].lower())
                if home is not None:
                    rest = local[cut + 1 :] if cut < len(local) else ""
                    return home, "-" if cut < len(local) else "", rest
            cut = local.rfind("-", 0, cut)
        return None

    def _user_home(self, name: str) -> str | None:
        """The home of system user ``name`` if qmail-getpw would take it (not root, owning
        its home), else None."""
        if name in self.passwd:
            return self.passwd[name]
        home = None
        try:
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0 and os.stat(entry.pw_dir).st_uid == entry.pw_uid:
                home = entry.pw_dir
        except (KeyError, OSError, ValueError):
            pass
        _remember(self.passwd, name, home)
        return home

    def _dot_qmail(self, home: str, dash: str, extension: str, domain: str) -> str:
        """qmail-local's search: .qmail-ext, then each shorter -default, then .qmail-default;
        the file found decides, unless it runs vdelivermail (then vpopmail's users do)."""
        ext = extension.lower().replace(".", ":")
        names = [ext]
        # names longer than NAME_MAX cannot exist: start at the longest -default that can
        position = min(len(ext), NAME_MAX - len(f".qmail{dash}-default") + 1)
        while (position := ext.rfind("-", 0, position)) >= 0:
            names.append(ext[:position] + "-default")
        names.append("default")
        for name in names:
            found = self._file(home, f".qmail{dash}{name}")
            if found == EXISTS:
                return self._vpopmail().judge(f"{home}/.qmail{dash}{name}", extension, domain)
            if found != NO_MAILBOX:
                return found
        return self._file(home, "")

    def _vpopmail(self) -> "vpopmail.Domains":
        if self.vpopmail is None:
            from qqfilter.checks.recipients import vpopmail

            self.vpopmail = vpopmail.Domains(self.users, self.notes)
        return self.vpopmail

    def _file(self, home: str, name: str) -> str:
        """EXISTS, NO_MAILBOX (absent) or CANNOT_JUDGE for ``home``/``name``; for name "",
        NO_MAILBOX when ``home`` may be searched, else CANNOT_JUDGE."""
        path = f"{home}/{name}"
        if path in self.files:
            return self.files[path]
        if len(name) > NAME_MAX or len(os.fsencode(name)) > NAME_MAX:
            return NO_MAILBOX  # no such name can exist (nor is it remembered: it is free)
        if not name:
            found = NO_MAILBOX if os.access(home, os.X_OK) else CANNOT_JUDGE
        else:
            try:
                os.stat(path)
                found = EXISTS
            except FileNotFoundError:
                found = NO_MAILBOX
            except OSError:
                found = CANNOT_JUDGE  # a home we may not look into
        _remember(self.files, path, found)
        return found


def _remember(memo: dict, key: object, value: object) -> None:
    if len(memo) < MEMO_MAX:
        memo[key] = value


class _Users:
    """users/assign (where qmail-newu has not been run) as a lookup."""

    def __init__(self, exact: dict[str, tuple], wild: dict[str, tuple], wildchars: str) -> None:
        self.exact = exact
        self.wild = wild
        self.wildchars = wildchars

    def lookup(self, local: str) -> tuple[str, str, str] | None:
        """(home, dash, extension) as qmail-lspawn finds them, or None for no entry."""
        if local in self.exact:
            return self.exact[local]
        for i in range(len(local), -1, -1):
            if i and local[i - 1] not in self.wildchars:
                continue
            prefix = local[:i]
            if prefix in self.wild:
                home, dash, pre = self.wild[prefix]
                return home, dash, pre + local[i:]
        return None

    def domain_dir(self, domain: str) -> str | None:
        """The home of the ``+domain-`` entry (vpopmail's vget_assign), or None."""
        entry = self.wild.get(f"{domain}-")
        return entry[0] if entry else None

    def close(self) -> None:
        pass


def _users(qmailhome: str) -> _Users | None:
    """users/cdb, else users/assign, else None. A users/cdb that cannot be read or believed is
    a configuration error (55), as every file of qmail's is (qqfilter.control)."""
    path = os.path.join(qmailhome, "users", "cdb")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return _assign(qmailhome)
    except OSError as exc:
        raise control.unreadable("users/cdb", path, exc) from None
    try:
        why = control.unsafe(os.fstat(fd))
        if why:
            raise QueueError(CONFIG_ERROR, f"users/cdb: {path} {why}")
        return _CdbUsers(_Cdb(fd, path))
    except BaseException:
        os.close(fd)  # the one owner of fd until _CdbUsers is made
        raise


class _Cdb:
    """A cdb file read by lookup, as qmail's cdb_seek reads it: ``pread``s of the header, the
    slots and the record, never the whole file (and no mmap, which a file cut short under us
    would turn into SIGBUS). Damage (a short read, a table past the end, a table with no
    empty slot) is QueueError 55, as in qmail-lspawn it is a temporary failure; the log line
    names the file (``name``) and how to mend it (``fix``)."""

    def __init__(
        self, fd: int, path: str, name: str = "users/cdb", fix: str = "rebuild it with qmail-newu"
    ) -> None:
        self.fd = fd
        self.path = path
        self.name = name
        self.fix = fix
        self.size = os.fstat(fd).st_size
        header = self._read(0, 2048)
        self.tables = list(struct.iter_unpack("<LL", header))
        for position, slots in self.tables:
            if slots and (position < 2048 or position + 8 * slots > self.size):
                where = f"{slots} slots at {position} of {self.size} bytes"
                raise self._damaged(f"a hash table outside the file ({where})")
        self.found: dict[bytes, bytes | None] = {}
        from cdblib import djb_hash

        self.hash = djb_hash

    def get(self, key: bytes) -> bytes | None:
        """The first record's data for ``key``, or None."""
        if key in self.found:
            return self.found[key]
        value = self._get(key)
        _remember(self.found, key, value)
        return value

    def _get(self, key: bytes) -> bytes | None:
        hashed = self.hash(key) & 0xFFFFFFFF
        position, slots = self.tables[hashed & 255]
        if not slots:
            return None
        slot = (hashed >> 8) % slots
        probed = 0
        while probed < slots:
            run = min(SLOTS_READ, slots - slot, slots - probed)  # to the table's end, then on
            for value, record in struct.iter_unpack(
                "<LL", self._read(position + 8 * slot, 8 * run)
            ):
                if not record:
                    return None
                if value == hashed:
                    klen, dlen = struct.unpack("<LL", self._read(record, 8))
                    if dlen > CDB_VALUE_MAX:
                        raise self._damaged(f"a record of {dlen} bytes at {record}")
                    if klen == len(key) and self._read(record + 8, klen) == key:
                        return self._read(record + 8 + klen, dlen)
            probed += run
            slot = (slot + run) % slots
        raise self._damaged(f"a hash table at {position} without an empty slot")

    def _read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self.fd, length, offset)
        except OSError as exc:
            raise control.unreadable(self.name, self.path, exc) from None
        if len(data) < length:
            raise self._damaged(f"cut short at {self.size} bytes")
        return data

    def _damaged(self, what: str) -> QueueError:
        why = f"{self.name}: {self.path} is damaged: {what} ({self.fix})"
        return QueueError(CONFIG_ERROR, why)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _CdbUsers(_Users):
    """users/cdb read as qmail-lspawn reads it."""

    def __init__(self, cdb: _Cdb) -> None:
        self.cdb = cdb
        wildchars = cdb.get(b"") or b""
        super().__init__({}, {}, wildchars.decode("latin-1"))

    def lookup(self, local: str) -> tuple[str, str, str] | None:
        """qmail-lspawn's search: ``!local\\0`` (an ``=`` entry), then ``!prefix`` (a ``+``
        entry) for each shorter prefix ending in a wildcard character, down to ``!``."""
        key = ("!" + local).encode("latin-1", "replace") + b"\0"
        cuts = {i + 1 for char in self.wildchars.encode("latin-1") for i in _places(key, char)}
        for i in sorted(cuts | {len(key), 1}, reverse=True):
            wild = i < len(key)
            value = self.cdb.get(key[:i])
            if value is None:
                continue
            fields = value.decode("latin-1").split("\0")
            if len(fields) < 6:
                return None
            extension = fields[5] + (local[i - 1 :] if wild else "")
            return fields[3], fields[4], extension
        return None

    def domain_dir(self, domain: str) -> str | None:
        """The home of the ``!domain-`` record, as vpopmail's vget_assign reads it."""
        value = self.cdb.get(f"!{domain}-".encode("latin-1", "replace"))
        fields = value.decode("latin-1").split("\0") if value is not None else []
        return fields[3] if len(fields) > 3 else None

    def close(self) -> None:
        self.cdb.close()


def _places(data: bytes, byte: int) -> list[int]:
    """Every index of ``byte`` in ``data``."""
    found, i = [], data.find(byte)
    while i >= 0:
        found.append(i)
        i = data.find(byte, i + 1)
    return found


def _assign(qmailhome: str) -> _Users | None:
    """users/assign's ``=`` and ``+`` lines (``=local:user:uid:gid:home:dash:ext:``)."""
    lines = control.trusted_lines(os.path.join(qmailhome, "users", "assign"), "assign")
    if lines is None:
        return None
    exact, wild = {}, {}
    for line in lines:
        if line == ".":
            break
        fields = line[1:].split(":")
        if len(fields) < 7:
            continue
        entry = (fields[4], fields[5], fields[6])
        if line.startswith("="):
            exact[fields[0].lower()] = entry
        elif line.startswith("+"):
            wild[fields[0].lower()] = entry
    wildchars = "".join(sorted({key[-1] for key in wild if key}))
    return _Users(exact, wild, wildchars)


def _list(path: str) -> tuple[set[str], set[str]]:
    """The list file: addresses (or ``@domain`` for all of one), and the domains it covers."""
    if not path:
        return set(), set()
    lines = control.trusted_lines(path, os.path.basename(path))
    if lines is None:
        raise control.unreadable("recipients list", path, FileNotFoundError(2, "No such file"))
    listed = {line.split()[0].lower() for line in lines if not line.startswith("#")}
    return listed, {entry.rpartition("@")[2] for entry in listed if "@" in entry}

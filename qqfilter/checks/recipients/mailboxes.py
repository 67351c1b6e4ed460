"""Does this address have a mailbox here? Answered the way qmail itself would deliver it.

qmail-send makes ``local@domain`` local when the domain is in control/locals, or turns it
into ``prefix-local`` by control/virtualdomains. qmail-lspawn then looks the local part up in
users/cdb (built from users/assign): ``!local`` exactly, else ``!prefix`` for the longest
prefix ending in a wildcard character, giving a user, a home and an extension; without a
match qmail-getpw takes the longest system user at a ``-`` boundary, else the alias user with
the whole local part as extension. qmail-local then looks for ``.qmail-ext``, then
``.qmail-<ext with its last parts>-default``, then ``.qmail-default`` in the home; when none
exists for a non-empty extension, it bounces "no mailbox here by that name".

Each answer is EXISTS, NO_MAILBOX, or CANNOT_JUDGE (not our domain, a home we may not read):
only NO_MAILBOX may ever refuse mail.
"""

import os
import pwd

from qqfilter import control

EXISTS = "exists"
NO_MAILBOX = "no mailbox"
CANNOT_JUDGE = "cannot judge"


class Mailboxes:
    """qmail's delivery data under ``qmailhome``, read once, and an optional list file."""

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
        self.users = _users(qmailhome)
        self.listed, self.listed_domains = _list(listfile)

    def judge(self, address: str) -> str:
        """EXISTS, NO_MAILBOX or CANNOT_JUDGE for the envelope address ``address``."""
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
            return self._local(local)
        prefix = self._virtual(local, domain)
        if prefix:
            return self._local(f"{prefix}-{local}")
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

    def _local(self, local: str) -> str:
        found = self.users.lookup(local.lower()) if self.users else None
        if found is None:
            found = _system_user(local) or (os.path.join(self.home, "alias"), "-", local)
        home, dash, extension = found
        if not extension:
            return EXISTS
        return _dot_qmail(home, dash, extension)


class _Users:
    """users/cdb (or, where qmail-newu has not been run, users/assign) as a lookup."""

    def __init__(self, exact: dict[str, tuple], wild: dict[str, tuple], wildchars: str) -> None:
        self.exact = exact
        self.wild = wild
        self.wildchars = wildchars

    def lookup(self, local: str) -> tuple[str, str, str] | None:
        """(home, dash, extension) as qmail-lspawn finds them, or None for no entry."""
        if local in self.exact:
            return self.exact[local]
        for i in range(len(local), -1, -1):
            prefix = local[:i]
            if i and prefix[-1] not in self.wildchars:
                continue
            if prefix in self.wild:
                home, dash, pre = self.wild[prefix]
                return home, dash, pre + local[i:]
        return None


def _users(qmailhome: str) -> _Users | None:
    path = os.path.join(qmailhome, "users", "cdb")
    data = control.read_trusted(path, "users/cdb", 1 << 30)
    if data is None:
        return _assign(qmailhome)
    import cdblib

    reader = cdblib.Reader(data)
    return _CdbUsers(reader)


class _CdbUsers(_Users):
    """users/cdb read as qmail-lspawn reads it."""

    def __init__(self, reader) -> None:
        self.reader = reader
        wildchars = reader.get(b"") or b""
        super().__init__({}, {}, wildchars.decode("latin-1"))

    def lookup(self, local: str) -> tuple[str, str, str] | None:
        """qmail-lspawn's search: ``!local\\0`` (an ``=`` entry), then ``!prefix`` (a ``+``
        entry) for each shorter prefix ending in a wildcard character, down to ``!``."""
        key = ("!" + local).encode("latin-1", "replace") + b"\0"
        for i in range(len(key), 0, -1):
            wild = i < len(key)
            if wild and i > 1 and chr(key[i - 1]) not in self.wildchars:
                continue
            value = self.reader.get(key[:i])
            if value is None:
                continue
            fields = value.decode("latin-1").split("\0")
            if len(fields) < 6:
                return None
            extension = fields[5] + (local[i - 1 :] if wild else "")
            return fields[3], fields[4], extension
        return None


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


def _system_user(local: str) -> tuple[str, str, str] | None:
    """qmail-getpw: the longest system user (not root, owning its home) at a ``-`` boundary."""
    cut = len(local)
    while cut > 0:
        name = local[:cut]
        try:
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0 and os.stat(entry.pw_dir).st_uid == entry.pw_uid:
                rest = local[cut + 1 :] if cut < len(local) else ""
                return entry.pw_dir, "-" if cut < len(local) else "", rest
        except (KeyError, OSError):
            pass
        cut = local.rfind("-", 0, cut)
    return None


def _dot_qmail(home: str, dash: str, extension: str) -> str:
    """qmail-local's search: .qmail-ext, then each shorter -default, then .qmail-default."""
    extension = extension.lower().replace(".", ":")
    names = [extension]
    position = len(extension)
    while (position := extension.rfind("-", 0, position)) >= 0:
        names.append(extension[:position] + "-default")
    names.append("default")
    for name in names:
        try:
            os.stat(os.path.join(home, f".qmail{dash}{name}"))
            return EXISTS
        except FileNotFoundError:
            continue
        except OSError:
            return CANNOT_JUDGE  # a home we may not look into
    if not os.access(home, os.X_OK):
        return CANNOT_JUDGE
    return NO_MAILBOX


def _list(path: str) -> tuple[set[str], set[str]]:
    """The list file: addresses (or ``@domain`` for all of one), and the domains it covers."""
    if not path:
        return set(), set()
    lines = control.trusted_lines(path, os.path.basename(path))
    if lines is None:
        raise control.unreadable("recipients list", path, FileNotFoundError(2, "No such file"))
    listed = {line.split()[0].lower() for line in lines if not line.startswith("#")}
    return listed, {entry.rpartition("@")[2] for entry in listed if "@" in entry}

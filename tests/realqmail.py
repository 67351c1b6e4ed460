"""A real qmail for the tests and the benchmarks: notqmail built from ../shared/vendor.

qmail compiles its home directory into its programs (conf-qmail), and qmail-queue is setuid
qmailq with the queue's owners and modes as its install makes them, so a test qmail cannot be
a copy put anywhere: it is built once, with its home inside a cache directory keyed by the
tarball's sha256 (``$XDG_CACHE_HOME`` or ``~/.cache``, /var/cache when qmail's users could not
enter that), and reused by later runs. Only what the tests run is built (qmail-smtpd and
qmail-queue: ~3.5 s with make -j2, against ~9 s for ``make setup check``), and the directories
are made here as notqmail's hier.c makes them. A marker written last says a build is whole; a
file lock keeps two processes from building at once, or from using one queue at once
(``exclusive``).

Then: ``config`` writes control files as ``config-fast`` does, ``empty_queue`` and ``queued``
read and clear the queue in qmail-queue's layout, and ``smtp_session`` runs the real
``bin/qmail-smtpd`` on a socket pair (as tcpserver would give it a connection) and speaks SMTP
to it by hand, so the test chooses every byte on the wire.

A plain module, no pytest: bench/ scripts use it too. ``Unavailable`` means "cannot be built
here" (no tarball beside the project, qmail's users missing and not root): the tests skip on
it. A missing compiler is a ``BuildFailed``, as a missing clamd is an error in the suite:
.ci/run and ``install.sh --dev`` install build-essential.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT.parent / "shared" / "vendor"
PROGRAMS = ("qmail-smtpd", "qmail-queue")
"""What is built: all the tests run. Add a program here (and its mode below) to build more."""
RECIPE = "1"
"""Bump when the build or install steps change: a cached build of another recipe is redone."""
GROUPS = ("nofiles", "qmail")
USERS = {
    "alias": "nofiles",
    "qmaild": "nofiles",
    "qmaill": "nofiles",
    "qmailp": "nofiles",
    "qmailq": "qmail",
    "qmailr": "qmail",
    "qmails": "qmail",
}
"""qmail's users and their groups (notqmail's INSTALL.ids); its programs look them up by name."""
SPLIT = 23
"""conf-split: the queue's mess/, info/, local/, remote/ have this many subdirectories."""
QUEUE_DIRS = ("pid", "intd", "todo", "bounce", "mess", "info", "local", "remote")
"""Where a message's files can be (lock/ holds qmail-send's, never a message's)."""


class Unavailable(Exception):
    """A real qmail cannot be built here; the words say why and what would fix it."""


class BuildFailed(RuntimeError):
    """The build ran and failed; the text ends with the tail of the build log."""


# --- the build --------------------------------------------------------------------------------


def tarball() -> Path:
    """The vendored notqmail tarball (the newest name, should there be several)."""
    found = sorted(VENDOR.glob("notqmail-*.tar.gz"))
    if not found:
        raise Unavailable(f"no notqmail-*.tar.gz in {VENDOR} (the project's ../shared/vendor)")
    return found[-1]


def cache_dir(source: Path) -> Path:
    """Where the build of ``source`` lives: .../qqfilter-tests/notqmail-<sha256[:12]>.

    ``$REALQMAIL_CACHE`` names the directory above it; else ``$XDG_CACHE_HOME`` or ``~/.cache``,
    unless we are root and qmail-queue, setuid qmailq, could not enter it (root's home is
    0700): then /var/cache. (Not root, nothing is chowned: qmail-queue runs as ourselves.)"""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    explicit = os.environ.get("REALQMAIL_CACHE")
    if explicit:
        base = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "qqfilter-tests"
        if os.geteuid() == 0 and not _enterable_by_all(base):
            base = Path("/var/cache/qqfilter-tests")
    return base.absolute() / f"notqmail-{digest}"


def _enterable_by_all(path: Path) -> bool:
    """Can every user search each existing directory on the way to ``path``?"""
    for directory in [*reversed(path.absolute().parents), path.absolute()]:
        try:
            mode = directory.stat().st_mode
        except FileNotFoundError:
            return True  # we make the rest, 0755
        if not mode & 0o001:
            return False
    return True


def ensure_users() -> None:
    """Make qmail's groups and users where missing (root only; else Unavailable)."""
    missing_groups = [g for g in GROUPS if not _exists(grp.getgrnam, g)]
    missing_users = [u for u in USERS if not _exists(pwd.getpwnam, u)]
    if not missing_groups and not missing_users:
        return
    if os.geteuid() != 0:
        names = ", ".join(missing_groups + missing_users)
        raise Unavailable(f"qmail's users and groups are missing ({names}): run as root once")
    for group in missing_groups:
        subprocess.run(["groupadd", "--system", group], check=True, capture_output=True)
    for user in missing_users:
        subprocess.run(
            [
                *("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent"),
                *("--shell", "/usr/sbin/nologin", "--gid", USERS[user], user),
            ],
            check=True,
            capture_output=True,
        )


def _exists(lookup, name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def qmail_home(*, rebuild: bool = False) -> Path:
    """The qmail home of the vendored notqmail, built first if need be (or if ``rebuild``, or
    ``$REALQMAIL_REBUILD`` is set). Safe to call from several processes at once."""
    source = tarball()
    for tool in ("cc", "make"):
        if not shutil.which(tool):
            raise BuildFailed(f"no {tool} to build qmail with: apt-get install build-essential")
    ensure_users()
    cache = cache_dir(source)
    cache.mkdir(parents=True, exist_ok=True, mode=0o755)
    home = cache / "home"
    marker = cache / "built"
    wanted = _identity(home)
    rebuild = rebuild or bool(os.environ.get("REALQMAIL_REBUILD"))
    with locked(cache / "build.lock"):
        if not rebuild and read_marker(marker) == wanted:
            return home
        marker.unlink(missing_ok=True)
        started = time.monotonic()
        with exclusive(home):  # not under a run that is using the queue
            _build(source, cache, home)
        record = {**wanted, "seconds": round(time.monotonic() - started, 2)}
        partial = marker.with_suffix(".tmp")
        partial.write_text(json.dumps(record))
        partial.replace(marker)
    return home


def build_seconds(home: Path) -> float:
    """How long the build of ``home`` took when it was made."""
    return float(json.loads((home.parent / "built").read_text())["seconds"])


def _identity(home: Path) -> dict[str, object]:
    """What a cached build must match: the recipe, the home compiled in, and the ids its
    files were given (users made again get other uids)."""
    return {
        "recipe": RECIPE,
        "home": str(home),
        "programs": list(PROGRAMS),
        "uids": {u: pwd.getpwnam(u).pw_uid for u in USERS},
        "gids": {g: grp.getgrnam(g).gr_gid for g in GROUPS},
        "owner": os.geteuid(),
    }


def read_marker(marker: Path) -> dict[str, object] | None:
    """A build's marker without its timing: None when there is none (or half of one)."""
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    record.pop("seconds", None)
    return record


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """``path`` flock'd for the block: one build (or one user of a queue) at a time."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(source: Path, cache: Path, home: Path) -> None:
    """Compile PROGRAMS with ``home`` as conf-qmail, then install them into a fresh ``home``."""
    log = cache / "build.log"
    shutil.rmtree(home, ignore_errors=True)
    for left in cache.glob("build-*"):  # a build that was killed
        shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as scratch:
        with tarfile.open(source) as archive:
            # the "data" filter (no links out, no device files) where this Python has it
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(scratch, **safe)  # type: ignore[arg-type]
        (tree,) = Path(scratch).iterdir()
        (tree / "conf-qmail").write_text(f"{home}\n")
        jobs = max(2, min(4, os.cpu_count() or 2))
        with open(log, "wb") as out:
            proc = subprocess.run(
                ["make", f"-j{jobs}", *PROGRAMS],
                cwd=tree,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-40:]
            raise BuildFailed(
                f"building notqmail from {source} failed (make exit {proc.returncode}); "
                f"the end of {log}:\n" + "\n".join(tail)
            )
        _install(tree, home)


def _install(tree: Path, home: Path) -> None:
    """What ``make setup`` does for PROGRAMS (notqmail's hier.c, instfiles.c): directories,
    owners, modes; the queue tree; the alias user's .qmail files of INSTALL.alias."""
    owner = 0  # conf-users' fourth line: root owns the binaries and the home
    qmail = grp.getgrnam("qmail").gr_gid  # every file's group (none is nofiles')
    uid = {name: pwd.getpwnam(name).pw_uid for name in USERS}

    def make(relative: str, user: int, mode: int) -> Path:
        path = home / relative if relative else home
        path.mkdir(exist_ok=True)
        _own(path, user, qmail, mode)
        return path

    home.parent.mkdir(parents=True, exist_ok=True)
    make("", owner, 0o755)
    for name in ("control", "users", "bin"):
        make(name, owner, 0o755)
    alias = make("alias", uid["alias"], 0o2755)
    make("queue", uid["qmailq"], 0o750)
    make("queue/pid", uid["qmailq"], 0o700)
    make("queue/intd", uid["qmailq"], 0o700)
    make("queue/todo", uid["qmailq"], 0o750)
    make("queue/bounce", uid["qmails"], 0o700)
    for split, user, mode in (
        ("mess", uid["qmailq"], 0o750),
        ("info", uid["qmails"], 0o700),
        ("local", uid["qmails"], 0o700),
        ("remote", uid["qmails"], 0o700),
    ):
        make(f"queue/{split}", user, mode)
        for i in range(SPLIT):
            make(f"queue/{split}/{i}", user, mode)
    make("queue/lock", uid["qmailq"], 0o750)
    tcpto = home / "queue/lock/tcpto"
    tcpto.write_bytes(b"\0" * 1024)
    _own(tcpto, uid["qmailr"], qmail, 0o644)
    sendmutex = home / "queue/lock/sendmutex"
    sendmutex.write_bytes(b"")
    _own(sendmutex, uid["qmails"], qmail, 0o600)
    trigger = home / "queue/lock/trigger"
    if not trigger.exists():
        os.mkfifo(trigger)
    _own(trigger, uid["qmails"], qmail, 0o622)
    modes = {"qmail-queue": (uid["qmailq"], 0o4711), "qmail-smtpd": (owner, 0o755)}
    for program in PROGRAMS:
        target = home / "bin" / program
        shutil.copyfile(tree / program, target)
        user, mode = modes.get(program, (owner, 0o755))
        _own(target, user, qmail, mode)
    for name in ("postmaster", "mailer-daemon", "root"):  # INSTALL.alias
        dot = alias / f".qmail-{name}"
        dot.write_text("&postmaster@example.net\n")
        _own(dot, uid["alias"], qmail, 0o644)


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    """chown (root only: without it, the files stay ours and qmail-queue runs as us), chmod
    after it (chown drops the setuid bit)."""
    if os.geteuid() == 0:
        os.lchown(path, uid, gid)
    os.chmod(path, mode)


@contextlib.contextmanager
def exclusive(home: Path) -> Iterator[Path]:
    """Hold ``home``'s queue for this process: another test run (or a benchmark) that uses the
    same build waits until it is released, and so does a rebuild. Tests empty the queue inside
    it. Call ``qmail_home`` before, not inside it (a rebuild takes the same lock)."""
    with locked(home.parent / "queue.lock"):
        yield home


# --- control files and the queue ---------------------------------------------------------------


def config(
    home: Path,
    me: str = "mx.example.org",
    *,
    rcpthosts: Sequence[str] | None = None,
    locals_: Sequence[str] | None = None,
    files: Mapping[str, str] | None = None,
) -> None:
    """qmail's configuration, from scratch: control/me, rcpthosts and locals (``me`` by default,
    as ``config-fast me`` writes them) and ``files`` (name -> text); every other control file
    is removed, so no test sees another's."""
    control = home / "control"
    for old in control.iterdir():
        old.unlink()
    written = {
        "me": me,
        "rcpthosts": "\n".join(rcpthosts if rcpthosts is not None else [me]),
        "locals": "\n".join(locals_ if locals_ is not None else [me]),
        **(files or {}),
    }
    for name, text in written.items():
        path = control / name
        path.write_text(text if text.endswith("\n") or not text else text + "\n")
        path.chmod(0o644)


def queue_files(home: Path) -> list[Path]:
    """Every file in the queue's message directories (messages, envelopes, half-made ones)."""
    queue = home / "queue"
    found = []
    for name in QUEUE_DIRS:
        for path in sorted((queue / name).rglob("*")):
            if not path.is_dir():
                found.append(path)
    return found


def empty_queue(home: Path) -> None:
    """Remove every message from the queue (qmail-send is not running: nothing else writes)."""
    for path in queue_files(home):
        path.unlink()


class Queued:
    """One queued message: the bytes of its mess/ file and its envelope (intd/, todo/)."""

    __slots__ = ("inode", "message", "pid", "recipients", "sender", "uid")

    def __init__(self, inode: int, message: bytes, envelope: bytes) -> None:
        self.inode = inode
        self.message = message
        # qmail-queue's envelope: u<uid>\0 p<pid>\0 F<sender>\0 then T<recipient>\0 each
        fields = envelope.split(b"\0")
        assert fields[-1] == b"", f"envelope not ended by a NUL: {envelope!r}"
        uid, pid, sender, *recipients = fields[:-1]
        assert uid[:1] == b"u" and pid[:1] == b"p" and sender[:1] == b"F", envelope
        assert all(r[:1] == b"T" for r in recipients), envelope
        self.uid = int(uid[1:])
        self.pid = int(pid[1:])
        self.sender = sender[1:]
        self.recipients = [r[1:] for r in recipients]

    def __repr__(self) -> str:
        return f"Queued(inode={self.inode}, sender={self.sender!r}, to={self.recipients!r})"


def queued(home: Path) -> list[Queued]:
    """The messages qmail-queue finished (an envelope in todo/, or only in intd/ when
    qmail-send has not run), oldest first. qmail-queue names the files by the inode of the
    message file: mess/<inode % 23>/<inode>, intd/<inode>, todo/<inode>."""
    queue = home / "queue"
    found = []
    names = {p.name for p in (queue / "todo").iterdir()} | {
        p.name for p in (queue / "intd").iterdir()
    }
    for name in names:
        envelope = queue / "todo" / name
        if not envelope.exists():
            envelope = queue / "intd" / name
        mess = queue / "mess" / str(int(name) % SPLIT) / name
        found.append((mess.stat().st_mtime_ns, int(name), mess.read_bytes(), envelope))
    return [Queued(inode, data, env.read_bytes()) for _, inode, data, env in sorted(found)]


# --- an SMTP session with the real qmail-smtpd ------------------------------------------------


class Session:
    """What one SMTP session said: each reply by the command it answered ("greeting",
    "helo", "mail", "rcpt <addr>", "data", "message", "quit"), as (code, text) with the
    lines of a multi-line reply joined by newlines; qmail-smtpd's stderr (where its queue
    program, qqfilter, writes its log line) and exit status."""

    def __init__(self) -> None:
        self.replies: dict[str, tuple[int, str]] = {}
        self.stderr = b""
        self.returncode: int | None = None

    @property
    def data(self) -> tuple[int, str]:
        """The answer to the message (after the final dot): the queue program's verdict.
        When DATA itself was refused, that answer."""
        return self.replies.get("message") or self.replies["data"]

    @property
    def reply(self) -> str:
        """``data`` as one line: "554 mail server permanently rejected message (#5.3.0)"."""
        code, text = self.data
        return f"{code} {text}"

    @property
    def log(self) -> list[str]:
        """The lines on stderr (qqfilter's log lines)."""
        return self.stderr.decode("utf-8", "replace").splitlines()


def wire(message: bytes) -> bytes:
    """``message`` (lines ended by LF, as qmail stores them) as an SMTP client sends it after
    DATA: CRLF line ends, leading dots doubled, the final dot line."""
    if message and not message.endswith(b"\n"):
        message += b"\n"
    lines = message.split(b"\n")[:-1] if message else []
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


def smtp_session(
    home: Path,
    env: Mapping[str, str],
    message: bytes,
    sender: bytes,
    recipients: Sequence[bytes],
    qmailqueue: str | None = None,
    *,
    helo: bytes = b"client.example",
    timeout: float = 60,
) -> Session:
    """One SMTP session with ``home``'s bin/qmail-smtpd on a socket pair: HELO, MAIL FROM,
    RCPT TO each recipient, DATA, the message (``wire``), QUIT.

    ``env`` is qmail-smtpd's whole environment (PATH is added when absent): TCPREMOTEIP,
    RELAYCLIENT, DATABYTES, and the queue program's settings, which it inherits.
    ``qmailqueue`` is QMAILQUEUE (None: qmail's own bin/qmail-queue)."""
    environ = {"PATH": "/usr/bin:/bin", **env}
    if qmailqueue is not None:
        environ["QMAILQUEUE"] = qmailqueue
    ours, theirs = socket.socketpair()
    session = Session()
    with ours, tempfile.TemporaryFile() as errors:
        with theirs:
            proc = subprocess.Popen(
                [str(home / "bin" / "qmail-smtpd")],
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=errors,
                env=environ,
            )
        ours.settimeout(timeout)
        reader = ours.makefile("rb")
        try:
            session.replies["greeting"] = _reply(reader)
            for key, line in (
                ("helo", b"HELO " + helo),
                ("mail", b"MAIL FROM:<" + sender + b">"),
                *((f"rcpt {r.decode()}", b"RCPT TO:<" + r + b">") for r in recipients),
            ):
                ours.sendall(line + b"\r\n")
                session.replies[key] = _reply(reader)
            ours.sendall(b"DATA\r\n")
            session.replies["data"] = _reply(reader)
            if session.replies["data"][0] == 354:
                ours.sendall(wire(message))
                session.replies["message"] = _reply(reader)
            ours.sendall(b"QUIT\r\n")
            session.replies["quit"] = _reply(reader)
        finally:
            reader.close()
            with contextlib.suppress(OSError):
                ours.shutdown(socket.SHUT_RDWR)
            try:
                session.returncode = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                session.returncode = proc.wait()
            errors.seek(0)
            session.stderr = errors.read()
    return session


def _reply(reader) -> tuple[int, str]:
    """One SMTP reply, its lines' texts joined by newlines; (0, "") if the server hung up."""
    code, lines = 0, []
    while line := reader.readline():
        code = int(line[:3])
        lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
        if line[3:4] != b"-":
            break
    return code, "\n".join(lines)

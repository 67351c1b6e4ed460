"""``qqfilter serve``: the resident server the QMAILQUEUE client (qqfilter.client) asks.

Libraries are imported once, at start; DNS answers are cached by their TTLs; each message is
decided in a thread of its own by exactly the code the one-shot program runs
(qqfilter.qmailqueue.decide), on the client's own descriptors. At most ``limit`` messages are
under the checks at once (Gate); one that waits longer than ``wait`` seconds gets 71. Only
peers whose uid (SO_PEERCRED) is allowed may use the socket, and the socket's mode says the
same. SIGHUP empties the DNS cache (settings and control files are read for every message
anyway); SIGTERM stops accepting, lets the messages in work finish, and exits.
"""

import contextlib
import grp
import os
import pwd
import signal
import socket
import sys
import threading
import time

from qqfilter import logline
from qqfilter.exitcodes import TEMPFAILED, QueueError
from qqfilter.qmailqueue import Decision, decide

MAGIC = b"QQF1"
MAX_REQUEST = 1 << 20
PRELOAD = (
    "dns.resolver",
    "spf",
    "magic",
    "email.message",
    "email.header",
    "zipfile",
    "cdblib",
    "subprocess",
    "tomllib",
    "qqfilter.checks.attachments",
    "qqfilter.checks.recipients",
    "qqfilter.checks.spf",
    "qqfilter.checks.virus",
    "qqfilter.archives",
    "qqfilter.authheaders",
    "qqfilter.clamd",
    "qqfilter.filetypes",
    "qqfilter.mailboxes",
    "qqfilter.mime",
    "qqfilter.qhpsi",
    "qqfilter.received",
    "qqfilter.resolver",
    "qqfilter.spfeval",
    "qqfilter.warlord",
)
"""What a message may need, imported before the first one comes."""


class Server:
    """The listening socket, its rules, and the messages in work."""

    def __init__(
        self, path: str, *, limit: int, wait: float, users: set[int], group: int | None
    ) -> None:
        self.path = path
        self.gate = Gate(limit, wait)
        self.users = users
        self.group = group
        self.stopping = threading.Event()
        self.workers: set[threading.Thread] = set()
        self.listener = self._listen()

    def _listen(self) -> socket.socket:
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # left by a server that died: nobody answers there
            else:
                raise SystemExit(f"qqfilter serve: {self.path}: another server answers there")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old = os.umask(0o177 if self.group is None else 0o117)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
        listener.listen(128)
        listener.settimeout(0.2)
        return listener

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            worker = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self.workers.add(worker)
            worker.start()
            self.workers = {w for w in self.workers if w.is_alive()}
        self.listener.close()
        os.unlink(self.path)
        for worker in list(self.workers):
            worker.join()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            fds: list[int] = []
            try:
                allowed = self._allowed(connection)
                data, ancillary, _flags, _ = connection.recvmsg(
                    MAX_REQUEST, socket.CMSG_SPACE(2 * 4), socket.MSG_CMSG_CLOEXEC
                )
                fds = _descriptors(ancillary)
                fields = data.split(b"\0")
                if not allowed:
                    answer = _refusal(fields, "resident server: this user may not use it")
                elif len(fields) < 3 or fields[0] != MAGIC or len(fds) != 2:
                    answer = _refusal(fields, "resident server: malformed request")
                else:
                    decision = self._decide(fields, fds)
                    if decision.program:  # ours to close once they are on their way
                        fds += [decision.message_fd, decision.envelope_fd]
                    answer = _answer(decision)
                connection.sendmsg(*answer)
            except OSError:
                pass  # the client went away: it is its exit status qmail-smtpd sees
            finally:
                for fd in fds:
                    os.close(fd)

    def _allowed(self, connection: socket.socket) -> bool:
        return peer_allowed(connection, self.users, self.group)

    def _decide(self, fields: list[bytes], fds: list[int]) -> Decision:
        environ = {}
        for entry in fields[3:]:
            name, equals, value = entry.partition(b"=")
            if equals:
                environ[os.fsdecode(name)] = os.fsdecode(value)
        pipes = {int(p) for p in fields[2].split(b",") if p.isdigit()}
        pid = int(fields[1]) if fields[1].isdigit() else 0
        return decide(environ, fds[0], fds[1], pipes.__contains__, pid, self.gate)


class Gate:
    """At most ``limit`` messages under the checks at once; a message that waits longer
    than ``wait`` seconds for its turn is 71. Taken after spooling, so a slow SMTP client
    holds a thread, never a turn."""

    def __init__(self, limit: int, wait: float) -> None:
        self.turns = threading.BoundedSemaphore(limit)
        self.wait = wait

    def __enter__(self) -> None:
        if not self.turns.acquire(timeout=self.wait):
            raise QueueError(TEMPFAILED, f"resident server busy for {self.wait:g} s")

    def __exit__(self, *_exc) -> None:
        self.turns.release()


def peer_allowed(connection: socket.socket, users: set[int], group: int | None) -> bool:
    """True when the peer's uid (SO_PEERCRED) is in ``users`` or its gid is ``group``."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _pid, uid, gid = (int.from_bytes(credentials[i : i + 4], sys.byteorder) for i in (0, 4, 8))
    return uid in users or (group is not None and gid == group)


def _descriptors(ancillary) -> list[int]:
    return [
        int.from_bytes(chunk[i : i + 4], sys.byteorder)
        for level, kind, chunk in ancillary
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
        for i in range(0, len(chunk) - len(chunk) % 4, 4)
    ]


def _answer(decision: Decision) -> tuple[list[bytes], list]:
    kind = b"exec" if decision.program else b"exit"
    payload = b"\0".join(
        [
            MAGIC,
            kind,
            str(decision.code).encode(),
            str(decision.errfd).encode(),
            os.fsencode(decision.program),
            decision.line.encode("ascii", "backslashreplace"),
            decision.reply,
        ]
    )
    if not decision.program:
        return [payload], []
    fds = decision.message_fd.to_bytes(4, sys.byteorder) + decision.envelope_fd.to_bytes(
        4, sys.byteorder
    )
    return [payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]


def _refusal(fields: list[bytes], reason: str) -> tuple[list[bytes], list]:
    pid = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    line = {"pid": pid, "verdict": "error", "code": 71, "reason": reason}
    decision = Decision(71, logline.format_text(line))
    return _answer(decision)


def serve(path: str, *, limit: int, wait: float, users: list[str], group: str) -> int:
    """Run the server on ``path`` until SIGTERM; returns the exit status."""
    started = time.monotonic()
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # libmagic may be missing: checks cope
            __import__(name)
    allowed = {os.getuid(), 0} | {_uid(u) for u in users}
    gid = grp.getgrnam(group).gr_gid if group else None
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    server = Server(path, limit=limit, wait=wait, users=allowed, group=gid)
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: server.stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: _reload())
    _say(f"serving on {path} (ready in {time.monotonic() - started:.2f} s)")
    server.run()
    _say("stopped")
    return 0


def _uid(user: str) -> int:
    return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid


def _reload() -> None:
    from qqfilter import resolver

    resolver.forget()
    _say("SIGHUP: DNS cache emptied; settings and control files are read for every message")


def _say(text: str) -> None:
    logline.write_line(f"qqfilter serve: {text}")

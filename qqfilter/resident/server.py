"""``qqfilter serve``: the resident server the QMAILQUEUE client (client.py) asks.

Libraries are imported once, at start (each check unit's PRELOAD); DNS answers are cached by
their TTLs; each message is decided in a thread of its own by exactly the code the one-shot
program runs (qqfilter.qmailqueue.decide), on the client's own descriptors. At most ``limit``
messages are under the checks at once (Gate); one that waits longer than ``wait`` seconds gets
71. Only
peers whose uid (SO_PEERCRED) is allowed may use the socket, and the socket's mode says the
same. SIGHUP empties the DNS cache (settings and control files are read for every message
anyway); SIGTERM stops accepting, lets the messages in work finish, and exits. The threads
need SIGPIPE and SIGXFSZ ignored (a client gone, a file size limit: errors, not deaths), as
CPython sets them at start.
"""

from __future__ import annotations

import argparse
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
from qqfilter.qmailqueue import Action, Decision, decide
from qqfilter.resident import wire

PRELOAD = ("tomllib",)
"""What every message needs besides the check units' own PRELOAD (the TOML file's reader)."""


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
                allowed = peer_allowed(connection, self.users, self.group)
                data, ancillary, _flags, _ = connection.recvmsg(
                    wire.MAX_REQUEST, wire.FDS_SPACE, socket.MSG_CMSG_CLOEXEC
                )
                fds = wire.descriptors(ancillary)
                request = wire.unpack_request(data)
                if not allowed:
                    answer = _refusal(data, "resident server: this user may not use it")
                elif request is None or len(fds) != 2:
                    answer = _refusal(data, "resident server: malformed request")
                else:
                    decision = decide(
                        request.environ,
                        fds[0],
                        fds[1],
                        request.pipes.__contains__,
                        request.pid,
                        self.gate,
                    )
                    action = decision.action
                    if action.program:  # ours to close once they are on their way
                        fds += [action.message_fd, action.envelope_fd]
                    answer = _answer(decision)
                connection.sendmsg(*answer)
            except OSError:
                pass  # the client went away: it is its exit status qmail-smtpd sees
            finally:
                for fd in fds:
                    os.close(fd)


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


def _answer(decision: Decision) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    """The packet (and the descriptors it passes) that tells the client ``decision``."""
    action = decision.action
    packet = wire.pack_answer(
        wire.Answer(
            wire.EXEC if action.program else wire.EXIT,
            action.code,
            action.errfd,
            action.program,
            decision.line.encode("ascii", "backslashreplace"),
            action.reply,
        )
    )
    if not action.program:
        return [packet], []
    return [packet], wire.rights((action.message_fd, action.envelope_fd))


def _refusal(data: bytes, reason: str) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    """The answer to a request the server will not decide: 71, and a line saying why."""
    pid = wire.request_pid(data)
    line = {"pid": pid, "verdict": "error", "code": TEMPFAILED, "reason": reason}
    return _answer(Decision(Action(TEMPFAILED), logline.format_text(line), "text", pid))


def serve(path: str, *, limit: int, wait: float, users: list[str], group: str) -> int:
    """Run the server on ``path`` until SIGTERM; returns the exit status."""
    started = time.monotonic()
    from qqfilter.checks import units

    for name in (*PRELOAD, *(name for unit in units() for name in unit.preload)):
        with contextlib.suppress(ImportError):  # libmagic may be missing: checks cope
            __import__(name)
    allowed = {os.getuid(), 0} | {_uid(u) for u in users}
    gid = grp.getgrnam(group).gr_gid if group else None
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
    from qqfilter.shared import resolver

    resolver.forget()
    _say("SIGHUP: DNS cache emptied; settings and control files are read for every message")


def _say(text: str) -> None:
    logline.write_line(f"qqfilter serve: {text}")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``serve`` subcommand."""
    serve_parser = sub.add_parser(
        "serve", help="run resident, for QMAILQUEUE clients on a unix socket (QQF_SOCKET)"
    )
    serve_parser.add_argument(
        "--socket", default=os.environ.get("QQF_SOCKET", ""), help="the socket (QQF_SOCKET)"
    )
    serve_parser.add_argument("--max", type=int, default=16, help="messages in work at once (16)")
    serve_parser.add_argument(
        "--wait", type=float, default=10.0, help="seconds a client may wait for a turn (10)"
    )
    serve_parser.add_argument(
        "--users", default="", help="users besides the server's own (and root) who may connect"
    )
    serve_parser.add_argument("--group", default="", help="a group whose members may connect")
    serve_parser.set_defaults(run=_command)


def _command(options: argparse.Namespace) -> int:
    if not options.socket:
        logline.write_line("qqfilter serve: give --socket PATH (or QQF_SOCKET)")
        return 2
    users = [u for u in options.users.split(",") if u]
    return serve(
        options.socket,
        limit=max(1, options.max),
        wait=options.wait,
        users=users,
        group=options.group,
    )

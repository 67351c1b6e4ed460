"""``qqfilter serve``: the resident server the QMAILQUEUE client (client.py) asks.

Libraries are imported once, at start (each check unit's PRELOAD); DNS answers are cached by
their TTLs; each message is decided in a thread of its own by exactly the code the one-shot
program runs (qqfilter.qmailqueue.decide), on the client's own descriptors. At most ``limit``
messages are under the checks at once (Gate); one that waits longer than ``wait`` seconds gets
71.

Anyone who can reach the socket can try to stop the server, so nothing a peer does may: a peer
whose uid (SO_PEERCRED) is not allowed is answered and closed before anything is read from it;
the request must come within IO_DEADLINE seconds and pass wire.unpack_request's bounds; at
most ``connections`` connections are served at once (past that, new ones wait in the listen
backlog); an accept() that fails (out of descriptors, say) costs a log line and a pause. A peer
that is neither the server's user nor root does not choose programs, paths or servers, nor the
environment of programs the checks run (``confine``).

SIGHUP empties the DNS cache (settings and control files are read for every message anyway);
SIGTERM stops accepting, ends the connections still waiting for their request, lets the
messages in work finish for at most ``grace`` seconds, and exits. The threads need SIGPIPE and
SIGXFSZ ignored (a client gone, a file size limit: errors, not deaths), as CPython sets them at
start.

With ``--metrics HOST:PORT`` it also serves Prometheus metrics (qqfilter.resident.metrics,
docs/metrics.md); without it, prometheus_client is never imported. A command line that cannot
be carried out (no such user, a socket it cannot listen on, a port in use) is one line and
exit status 2, before anything is served.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import resource
import signal
import socket
import stat
import sys
import threading
import time

from qqfilter import logline
from qqfilter.exitcodes import TEMPFAILED, QueueError, describe
from qqfilter.qmailqueue import Action, Decision, decide
from qqfilter.resident import wire
from qqfilter.settings import every_setting, server_only_variables

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.resident.metrics import Metrics

PRELOAD = ("tomllib",)
"""What every message needs besides the check units' own PRELOAD (the TOML file's reader)."""
IO_DEADLINE = 5.0
"""Seconds a connection may take to send its request, and the server to send its answer. A
client sends its request as soon as it is connected: one that does not is idle, or hostile."""
ACCEPT_PAUSE = 0.5
"""Seconds the server rests after accept() fails (out of descriptors, say): a connection left
in the backlog would otherwise make the loop spin."""
FDS_PER_CONNECTION = 8
"""Descriptors a message in work may hold: its connection, the message and envelope, the
spool, the two handed on, a scanner's socket or pipe. For the warning at start."""
CONNECTION_FACTS = frozenset(
    {
        "TCPREMOTEIP",
        "TCPREMOTEHOST",
        "TCPREMOTEINFO",
        "TCPREMOTEPORT",
        "TCPLOCALIP",
        "TCPLOCALHOST",
        "TCPLOCALPORT",
        "RELAYCLIENT",
        "HELOHOST",
        "SMTPAUTHUSER",
        "AUTHUSER",
        "SSL_CLIENT_S_DN_Email",
        "TCP6REMOTEINFO",
    }
)
"""What tcpserver and qmail-smtpd say about the SMTP connection: every peer's own to tell."""
USAGE_ERROR = 2
"""Exit status when the command line cannot be carried out (as qqfilter.tools.USAGE_ERROR)."""


class StartError(Exception):
    """Why the server cannot start as asked: one line for the person who typed the command."""


class Server:
    """The listening socket, its rules, and the connections in work."""

    def __init__(
        self,
        path: str,
        *,
        limit: int,
        wait: float,
        users: set[int],
        group: int | None,
        connections: int,
        grace: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = path
        self.metrics = metrics
        self.gate = Gate(limit, wait, metrics)
        self.users = users
        self.group = group
        self.grace = grace
        self.own_uid = os.getuid()
        self.server_only = server_only_variables()
        self.peer_variables = peer_variables()
        self.slots = threading.BoundedSemaphore(connections)
        self.stopping = threading.Event()
        self.workers: set[threading.Thread] = set()
        self.waiting: set[socket.socket] = set()
        """Connections whose request has not come yet: SIGTERM ends their wait."""
        self.lock = threading.Lock()
        self.listener = self._listen()

    def _listen(self) -> socket.socket:
        """The listening socket at ``path``; StartError, in words, when there cannot be one."""
        try:
            self._clear()
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except (OSError, ValueError) as exc:
            raise StartError(f"{self.path}: cannot listen there: {_words(exc)}") from None
        bound = False
        try:
            old = os.umask(0o177 if self.group is None else 0o117)
            try:
                listener.bind(self.path)
                bound = True
            finally:
                os.umask(old)
            if self.group is not None:
                os.chown(self.path, -1, self.group)
            listener.listen(128)
        except (OSError, ValueError) as exc:
            listener.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            raise StartError(f"{self.path}: cannot listen there: {_words(exc)}") from None
        listener.settimeout(0.2)
        return listener

    def _clear(self) -> None:
        """Remove a socket left at ``path`` by a server that died; StartError when another
        server answers there, or ``path`` is something else (never removed)."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise StartError(f"{self.path}: exists and is not a socket; not replacing it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(self.path)
            except ConnectionRefusedError:  # left by a server that died: nobody answers
                os.unlink(self.path)
                return
            except OSError as exc:  # EACCES, a socket of another type: not ours to take
                raise StartError(
                    f"{self.path}: cannot tell whether a server answers there: {_words(exc)}"
                ) from None
        raise StartError(f"{self.path}: another server answers there")

    def close(self) -> None:
        """Stop listening before ``run`` (a start that failed past the socket)."""
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.slots.acquire(timeout=0.2):
                continue  # every slot taken: new connections wait in the listen backlog
            connection = self._accept()
            if connection is None:
                self.slots.release()
            else:
                self._start(connection)  # the slot is the connection's now
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):  # removed by hand: gone all the same
            os.unlink(self.path)
        with self.lock:  # idle connections: their recvmsg returns at once (no request)
            for connection in self.waiting:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RD)
        give_up = time.monotonic() + self.grace
        for worker in list(self.workers):
            worker.join(max(0.0, give_up - time.monotonic()))
        left = sum(worker.is_alive() for worker in self.workers)
        if left:  # their clients see the connection end: 71, nothing was queued
            _say(f"{left} messages still in work after {self.grace:g} s: not waiting longer")

    def _accept(self) -> socket.socket | None:
        """The next connection; None when there is none yet, or accept() failed."""
        try:
            connection, _ = self.listener.accept()
        except TimeoutError:
            return None
        except OSError as exc:
            # EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED...: a server that exits here is
            # one any local user stops; a pause, and the backlog waits
            self._problem("accept_failed")
            if not self.stopping.is_set():
                _say(f"accept failed: {describe(exc)}; pausing {ACCEPT_PAUSE:g} s")
                self.stopping.wait(ACCEPT_PAUSE)
            return None
        return connection

    def _start(self, connection: socket.socket) -> None:
        """Refuse a peer that is not allowed, before reading anything; else a thread."""
        pid, uid, _gid = peer(connection)
        if not peer_allowed(connection, self.users, self.group):
            with connection:
                connection.setblocking(False)  # an empty socket takes one packet at once
                with contextlib.suppress(OSError):
                    connection.sendmsg(*_refusal(pid, "resident server: this user may not use it"))
            self.slots.release()
            self._problem("not_allowed")
            _say(f"refused pid {pid} uid {uid}: not an allowed user")
            return
        worker = threading.Thread(target=self._serve, args=(connection, pid, uid), daemon=True)
        try:
            worker.start()
        except RuntimeError as exc:  # no thread to be had (memory, a limit on processes)
            connection.close()
            self.slots.release()
            self._problem("no_thread")
            _say(f"cannot start a thread: {exc}; pausing {ACCEPT_PAUSE:g} s")
            self.stopping.wait(ACCEPT_PAUSE)
            return
        self.workers.add(worker)
        self.workers = {w for w in self.workers if w.is_alive()}

    def _serve(self, connection: socket.socket, pid: int, uid: int) -> None:
        fds: list[int] = []
        try:
            with connection:
                connection.settimeout(IO_DEADLINE)
                data, flags = self._receive(connection, fds)
                if data:  # none: the client closed without asking (it works without us)
                    connection.sendmsg(*self._decide(data, flags, fds, pid, uid))
                else:  # a request too big to send, say: done in-process, or 71
                    self._problem("closed_unasked")
        except TimeoutError:
            self._problem("no_request")
            _say(f"pid {pid} uid {uid}: nothing within {IO_DEADLINE:g} s; closed")
        except OSError:
            self._problem("client_gone")  # it is its exit status qmail-smtpd sees
        except Exception as exc:  # a bug: one line, and the server goes on
            self._problem("internal_error")
            _say(f"pid {pid} uid {uid}: internal error: {type(exc).__name__}: {exc}")
        finally:
            for fd in fds:
                os.close(fd)
            self.slots.release()

    def _receive(self, connection: socket.socket, fds: list[int]) -> tuple[bytes, int]:
        """The request packet (b"" at its end) and recvmsg's flags; its descriptors go to
        ``fds``."""
        with self.lock:
            if self.stopping.is_set():
                connection.shutdown(socket.SHUT_RD)  # a request already sent is still read
            self.waiting.add(connection)
        try:
            data, ancillary, flags, _ = connection.recvmsg(
                wire.MAX_REQUEST, wire.FDS_SPACE, socket.MSG_CMSG_CLOEXEC
            )
        finally:
            with self.lock:
                self.waiting.discard(connection)
        fds += wire.descriptors(ancillary)
        return data, flags

    def _decide(
        self, data: bytes, flags: int, fds: list[int], pid: int, uid: int
    ) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
        """The answer to the request in ``data``; descriptors to close after go to ``fds``."""
        try:
            if flags & socket.MSG_TRUNC:
                raise ValueError(f"more than {wire.MAX_REQUEST} bytes")
            if flags & socket.MSG_CTRUNC or len(fds) != 2:
                raise ValueError("not the message's and the envelope's descriptors")
            request = wire.unpack_request(data)
        except ValueError as exc:
            self._problem("malformed")
            _say(f"malformed request from pid {pid} uid {uid}: {exc}")
            return _refusal(pid, "resident server: malformed request")
        environ, ignored = request.environ, tuple[str, ...]()
        if uid not in (self.own_uid, 0):
            environ, ignored = self.confine(request.environ)

        def decided() -> Decision:
            usable = request.pipes.__contains__
            return decide(environ, fds[0], fds[1], usable, request.pid, self.gate, ignored)

        decision = decided() if self.metrics is None else self.metrics.watch(decided)
        action = decision.action
        if action.program:  # ours to close once they are on their way
            fds += [action.message_fd, action.envelope_fd]
        return _answer(decision)

    def confine(self, theirs: dict[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
        """The environment a message of a peer that is neither this server's user nor root
        is decided in, and the server-only variables it set (ignored).

        It is the server's own environment, with the peer's connection facts and
        per-connection settings in place of the server's: so the peer chooses no program,
        path or server (QHPSI, QQF_SPOOLDIR, QQF_CLAMD, QQF_CONFIG...), and no PATH or
        LD_PRELOAD for the programs a check runs (a QHPSI scanner gets this environment).
        """
        environ = dict(os.environ)
        for name in self.peer_variables:
            environ.pop(name, None)  # unset by the peer: unset here too, as for the server's
            if name in theirs:
                environ[name] = theirs[name]
        return environ, tuple(sorted(name for name in theirs if name in self.server_only))

    def _problem(self, problem: str) -> None:
        """A connection that ended without a decision, for --metrics."""
        if self.metrics is not None:
            self.metrics.problem(problem)


class Gate:
    """At most ``limit`` messages under the checks at once; a message that waits longer
    than ``wait`` seconds for its turn is 71. Taken after spooling, so a slow SMTP client
    holds a thread, never a turn."""

    def __init__(self, limit: int, wait: float, metrics: Metrics | None = None) -> None:
        self.turns = threading.BoundedSemaphore(limit)
        self.wait = wait
        self.metrics = metrics

    def __enter__(self) -> None:
        if self.metrics is None:
            turn = self.turns.acquire(timeout=self.wait)
        else:
            started = time.monotonic()
            turn = self.turns.acquire(timeout=self.wait)
            self.metrics.waited(time.monotonic() - started, turn)
        if not turn:
            raise QueueError(TEMPFAILED, f"resident server busy for {self.wait:g} s")

    def __exit__(self, *_exc) -> None:
        self.turns.release()
        if self.metrics is not None:
            self.metrics.checking.dec()


def peer(connection: socket.socket) -> tuple[int, int, int]:
    """The peer's pid, uid and gid (SO_PEERCRED): the kernel's word, not the peer's."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid, uid, gid = (int.from_bytes(credentials[i : i + 4], sys.byteorder) for i in (0, 4, 8))
    return pid, uid, gid


def peer_allowed(connection: socket.socket, users: set[int], group: int | None) -> bool:
    """True when the peer's uid (SO_PEERCRED) is in ``users`` or its gid is ``group``."""
    _pid, uid, gid = peer(connection)
    return uid in users or (group is not None and gid == group)


def peer_variables() -> frozenset[str]:
    """What any allowed peer may set: its connection facts, and every setting's variable
    but the server-only ones (programs, their arguments, paths, servers, QQF_CONFIG)."""
    names = {name for row in every_setting() for name in (row.env, row.alias) if name}
    return CONNECTION_FACTS | frozenset(names - server_only_variables())


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


def _refusal(pid: int, reason: str) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    """The answer to a request the server will not decide: 71, and a line saying why (a
    tempfail, as the client's own: the client keeps the message and tries again; there is no
    message read to describe)."""
    line = {"pid": pid, "verdict": "tempfail", "code": TEMPFAILED, "reason": reason}
    return _answer(Decision(Action(TEMPFAILED), logline.format_text(line), "text", pid))


def serve(
    path: str,
    *,
    limit: int,
    wait: float,
    users: list[str],
    group: str,
    connections: int = 100,
    grace: float = 60.0,
    metrics: str = "",
    metrics_public: bool = False,
) -> int:
    """Run the server on ``path`` until SIGTERM; returns the exit status. ``metrics``,
    HOST:PORT, serves Prometheus metrics there (a non-loopback address only when
    ``metrics_public``). Raises StartError when it cannot start as asked."""
    started = time.monotonic()
    allowed = {os.getuid(), 0} | {_uid(u) for u in users}
    gid = _gid(group) if group else None
    watch = _metrics(metrics, metrics_public, limit, connections) if metrics else None
    from qqfilter.checks import units

    for name in (*PRELOAD, *(name for unit in units() for name in unit.preload)):
        # a C library may be missing (libmagic, libarchive13: ctypes fails with OSError or
        # AttributeError, not ImportError): the checks cope, and say so per message
        with contextlib.suppress(ImportError, OSError, AttributeError):
            __import__(name)
    server = Server(
        path,
        limit=limit,
        wait=wait,
        users=allowed,
        group=gid,
        connections=connections,
        grace=grace,
        metrics=watch[0] if watch else None,
    )
    where = _watch(server, *watch) if watch else ""
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: server.stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: _reload())
    descriptors, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if connections * FDS_PER_CONNECTION + 32 > descriptors:
        _say(
            f"--connections {connections} may need {connections * FDS_PER_CONNECTION} "
            f"descriptors, and the limit is {descriptors}: raise it (ulimit -n) or lower "
            "--connections; the server pauses while it has none"
        )
    _say(f"serving on {path}{where} (ready in {time.monotonic() - started:.2f} s)")
    server.run()
    _say("stopped")
    return 0


def _metrics(address: str, public: bool, limit: int, connections: int) -> tuple[Metrics, str, int]:
    """The metrics (not served yet), and the host and port --metrics ``address`` names.
    StartError when prometheus_client is missing, or ``address`` is no address or, unless
    ``public``, not a loopback one."""
    try:
        from qqfilter.resident.metrics import Metrics, parse_address
    except ImportError as exc:
        raise StartError(
            f"--metrics needs the prometheus_client package ({exc}): "
            "pip install 'qqfilter[metrics]'"
        ) from None
    from qqfilter.checks import units

    try:
        host, port = parse_address(address, public)
    except ValueError as exc:
        raise StartError(str(exc)) from None
    names = [unit.name for unit in units()]
    return Metrics(names, limit=limit, connections=connections), host, port


def _watch(server: Server, watching: Metrics, host: str, port: int) -> str:
    """Serve the metrics on ``host``:``port`` and watch the pipeline; the words for the
    ready line. StartError (the socket removed) when the port cannot be had."""
    try:
        host, port = watching.serve(host, port)
    except OSError as exc:
        server.close()
        raise StartError(f"--metrics {_bracketed(host)}:{port}: {_words(exc)}") from None
    watching.waiting.set_function(lambda: len(server.waiting))
    from qqfilter import pipeline

    pipeline.OBSERVER = watching
    return f", metrics on http://{_bracketed(host)}:{port}/metrics"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _uid(user: str) -> int:
    try:
        return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):
        raise StartError(f"--users {user}: no such user") from None


def _gid(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):
        raise StartError(f"--group {group}: no such group") from None


def _words(exc: BaseException) -> str:
    """An exception in words: an OSError's strerror, else what it says."""
    if isinstance(exc, OSError):
        return describe(exc)
    return str(exc) or type(exc).__name__


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
    serve_parser.add_argument(
        "--max", type=_count, default=16, help="messages in work at once (16)"
    )
    serve_parser.add_argument(
        "--wait", type=_seconds, default=10.0, help="seconds a client may wait for a turn (10)"
    )
    serve_parser.add_argument(
        "--connections",
        type=_count,
        default=100,
        help="connections served at once, spooling included; more wait in the backlog (100)",
    )
    serve_parser.add_argument(
        "--grace",
        type=_seconds,
        default=60.0,
        help="seconds SIGTERM waits for the messages in work (60)",
    )
    serve_parser.add_argument(
        "--users", default="", help="users besides the server's own (and root) who may connect"
    )
    serve_parser.add_argument("--group", default="", help="a group whose members may connect")
    serve_parser.add_argument(
        "--metrics",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus metrics there (PORT alone: 127.0.0.1; needs prometheus_client; "
        "docs/metrics.md)",
    )
    serve_parser.add_argument(
        "--metrics-public",
        action="store_true",
        help="allow --metrics on an address that is not loopback",
    )
    serve_parser.set_defaults(run=_command)


def _count(text: str) -> int:
    """--max, --connections: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 1 or more")
    return value


def _seconds(text: str) -> float:
    """--wait, --grace: seconds, 0 or more (no infinity: a wait for ever is a hang)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, 0 or more")
    return value


def _command(options: argparse.Namespace) -> int:
    if not options.socket:
        _say("give --socket PATH (or QQF_SOCKET)")
        return USAGE_ERROR
    if options.metrics_public and not options.metrics:
        _say("--metrics-public goes with --metrics HOST:PORT")
        return USAGE_ERROR
    users = [u for u in options.users.split(",") if u]
    try:
        return serve(
            options.socket,
            limit=options.max,
            wait=options.wait,
            users=users,
            group=options.group,
            connections=options.connections,
            grace=options.grace,
            metrics=options.metrics,
            metrics_public=options.metrics_public,
        )
    except StartError as exc:
        _say(str(exc))
        return USAGE_ERROR
    except KeyboardInterrupt:  # Ctrl-C while it starts (after that, SIGINT stops it)
        return 130

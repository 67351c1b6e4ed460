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

The GIL holds one process to one core of checks, so ``--workers N`` (default: the CPUs it may
use) runs N worker processes, each a Server with its threads, accepting on the one listening
socket. Their parent (Parent) binds it, imports the libraries once and forks them (the pages
are shared until written), replaces a worker that dies (after a pause when it died within
QUICK_DEATH seconds of its start; after QUICK_DEATHS such deaths in a row it gives up, exit
status 1, so a broken install does not fork for ever), passes SIGHUP and SIGTERM on and waits
for the workers' messages in work; workers die with it (PR_SET_PDEATHSIG). --max and
--connections are the whole server's, shared out between the workers (``shares``). With
--metrics the parent serves the sum of the workers' counts (prometheus_client's multiprocess
mode, in a directory beside the socket). One worker is the Server itself, with no parent:
exactly the server of one process.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import grp
import os
import pwd
import resource
import select
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
    from collections.abc import Callable
    from http.server import HTTPServer
    from typing import NoReturn

    from prometheus_client import CollectorRegistry

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
GAVE_UP = 1
"""Exit status when the workers keep dying as they start (QUICK_DEATHS in a row)."""
MAX_WORKERS = 256
"""The most --workers may ask for: each is a process of its own (a typo is not a fork bomb)."""
QUICK_DEATH = 5.0
"""Seconds: a worker that ends sooner after its start died quickly (a broken install, a
library that fails to load, a crash on every message)."""
QUICK_DEATHS = 5
"""Quick deaths in a row after which the parent gives up: it stops, removes the socket (the
clients work in-process meanwhile) and exits 1, for supervise or systemd to start it again."""
RESTART_PAUSE = 1.0
"""Seconds the parent waits before it replaces a worker that died quickly; one that had run
longer is replaced at once."""
STOP_MARGIN = IO_DEADLINE + 5.0
"""Seconds past --grace the parent waits for its workers after SIGTERM (each stops within
--grace of it), before it kills those left."""
WORKER_EXIT = "QQF_TEST_WORKEREXIT"
"""For the tests only: a worker started with this variable in the server's environment exits
at once with the status it names (the parent's back-off and its giving up)."""
MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's multiprocess mode: read when it is imported, and as each worker makes
its instruments."""
FORWARDED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})
"""The signals the parent acts on: blocked around fork, so a worker gets them only once it
has its own handlers."""
PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent ends."""


class StartError(Exception):
    """Why the server cannot start as asked: one line for the person who typed the command."""


class Server:
    """The listening socket, its rules, and the connections in work."""

    def __init__(
        self,
        path: str,
        listener: socket.socket,
        *,
        limit: int,
        wait: float,
        users: set[int],
        group: int | None,
        connections: int,
        grace: float,
        metrics: Metrics | None = None,
        owner: bool = True,
    ) -> None:
        self.path = path
        self.listener = listener
        self.owner = owner
        """Whether the socket at ``path`` is this server's to remove (not a worker's)."""
        self.metrics = metrics
        self.gate = Gate(limit, wait, metrics)
        self.users = users
        self.group = group
        self.grace = grace
        self.own_uid = os.getuid()
        self.server_only = server_only_variables()
        self.peer_variables = peer_variables()
        self.capacity = connections
        self.slots = threading.BoundedSemaphore(connections)
        self.stopping = threading.Event()
        self.workers: set[threading.Thread] = set()
        self.waiting: set[socket.socket] = set()
        """Connections whose request has not come yet: SIGTERM ends their wait."""
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.is_set():
            if self.metrics is not None:
                self.metrics.dns()  # a SIGHUP's emptied cache, within a turn of the loop
            if not self.slots.acquire(timeout=0.2):
                continue  # every slot taken: new connections wait in the listen backlog
            connection = self._accept()
            if connection is None:
                self.slots.release()
            else:
                self._start(connection)  # the slot is the connection's now
        self.listener.close()
        if self.owner:
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
            if self.metrics is not None:
                self.metrics.waiting.inc()
        try:
            data, ancillary, flags, _ = connection.recvmsg(
                wire.MAX_REQUEST, wire.FDS_SPACE, socket.MSG_CMSG_CLOEXEC
            )
        finally:
            with self.lock:
                self.waiting.discard(connection)
                if self.metrics is not None:
                    self.metrics.waiting.dec()
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
        self.limit = limit
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
    workers: int = 1,
) -> int:
    """Run the server on ``path`` until SIGTERM; returns the exit status. ``workers``
    processes decide the messages (1: this one, with no parent); ``limit`` and
    ``connections`` are the whole server's, shared out between them. ``metrics``,
    HOST:PORT, serves Prometheus metrics there (a non-loopback address only when
    ``metrics_public``). Raises StartError when it cannot start as asked."""
    started = time.monotonic()
    allowed = {os.getuid(), 0} | {_uid(u) for u in users}
    gid = _gid(group) if group else None
    directory = f"{path}.metrics" if metrics and workers > 1 else ""
    _multiprocess(directory)  # before prometheus_client is imported
    address = _metrics_address(metrics, metrics_public) if metrics else None
    _preload()
    listener = listen(path, gid)
    limits, slots = shares(limit, workers), shares(connections, workers)

    def make(slot: int, owner: bool) -> Server:
        """A Server: this process's, or worker ``slot``'s (in the worker)."""
        watch = _instruments() if address else None
        return Server(
            path,
            listener,
            limit=limits[slot],
            wait=wait,
            users=allowed,
            group=gid,
            connections=slots[slot],
            grace=grace,
            metrics=watch,
            owner=owner,
        )

    if workers == 1:
        return _alone(make(0, True), address, started)
    parent = Parent(path, listener, workers, lambda slot: make(slot, False), grace)
    where = ""
    try:
        if address is not None:
            _metrics_directory(directory)
    except StartError:  # not a directory of ours: left as it is
        parent.close()
        raise
    try:
        if address is not None:
            parent.ended = _forgetting(directory)
            from qqfilter.resident.metrics import describe, multiprocess

            page = multiprocess(directory)
            describe(
                page,
                limit=sum(limits),
                connections=sum(slots),
                processes=parent.pids,
                spent=lambda: parent.spent,
            )
            httpd, where = _show(page, *address)
            parent.private.append(httpd.fileno())
    except StartError:
        parent.close()
        _empty(directory)
        raise
    _descriptors(connections, slots[0], workers)
    gc.freeze()  # what is imported stays shared with the workers: the collector writes no page

    def announce() -> None:
        took = time.monotonic() - started
        _say(f"serving on {path} with {workers} workers{where} (ready in {took:.2f} s)")

    status = parent.run(announce)
    if directory:
        _empty(directory)
    if status == 0:
        _say("stopped")
    return status


def _alone(server: Server, address: tuple[str, int] | None, started: float) -> int:
    """Serve in this process (one worker): the server of one process, with no parent."""
    where = ""
    if address is not None and server.metrics is not None:
        from qqfilter.resident.metrics import describe

        describe(server.metrics.registry, limit=server.gate.limit, connections=server.capacity)
        try:
            _httpd, where = _show(server.metrics.registry, *address)
        except StartError:
            server.listener.close()
            with contextlib.suppress(OSError):
                os.unlink(server.path)
            raise
        from qqfilter import pipeline

        pipeline.OBSERVER = server.metrics
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: server.stopping.set())
    signal.signal(signal.SIGHUP, lambda *_: _reload())
    _descriptors(server.capacity, server.capacity, 1)
    took = time.monotonic() - started
    _say(f"serving on {server.path} with 1 worker{where} (ready in {took:.2f} s)")
    server.run()
    _say("stopped")
    return 0


class Parent:
    """The workers' parent: it forks ``count`` workers on ``listener``, replaces one that
    dies, passes SIGHUP and SIGTERM on, and stops when they have all ended. ``make(slot)``
    builds worker ``slot``'s Server, in the worker."""

    def __init__(
        self,
        path: str,
        listener: socket.socket,
        count: int,
        make: Callable[[int], Server],
        grace: float,
    ) -> None:
        import ctypes  # prctl, in each worker: imported here, once, before the forks

        self.libc = ctypes.CDLL(None, use_errno=True)
        self.path = path
        self.listener = listener
        self.count = count
        self.make = make
        self.grace = grace
        self.pid = os.getpid()
        self.workers: dict[int, tuple[int, float]] = {}
        """Each live worker's pid: its slot, and when it started (monotonic)."""
        self.ready: set[int] = set()
        """The workers that said they are serving."""
        self.due: dict[int, float] = {}
        """Slots without a worker: when to start one (monotonic)."""
        self.quick = 0
        """Workers in a row that died within QUICK_DEATH seconds of their start."""
        self.spent = 0.0
        """CPU seconds of the workers that have ended (wait4), for the metrics."""
        self.signals: set[int] = set()
        self.stopping = False
        self.ended: Callable[[int], None] | None = None
        """Told the pid of each worker that has ended (the metrics forget what it held)."""
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.ready_r, self.ready_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.private = [self.wake_r, self.wake_w, self.ready_r]
        """Descriptors the parent's alone: each worker closes them first."""

    def pids(self) -> list[int]:
        """The parent's pid, then the workers'."""
        return [self.pid, *self.workers]

    def close(self) -> None:
        """Stop listening, remove the socket, close the pipes (a start that failed, or the end)."""
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for fd in (self.wake_r, self.wake_w, self.ready_r, self.ready_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def run(self, announce: Callable[[], None]) -> int:
        """Fork the workers and keep them; ``announce()`` once they all serve. Returns the
        exit status: 0 after SIGTERM or SIGINT, GAVE_UP after QUICK_DEATHS in a row."""
        for number in FORWARDED:
            signal.signal(number, self._signalled)
        signal.set_wakeup_fd(self.wake_w)
        self.due = dict.fromkeys(range(self.count), 0.0)
        announced = False
        status = 0
        while True:
            self._start_due()
            self._wait(self._until_due())
            self._reap()
            if self.signals & {signal.SIGTERM, signal.SIGINT}:
                break
            if self.quick >= QUICK_DEATHS:
                _say(
                    f"giving up: {self.quick} workers in a row ended within {QUICK_DEATH:g} s "
                    "of their start"
                )
                status = GAVE_UP
                break
            if signal.SIGHUP in self.signals:
                self.signals.discard(signal.SIGHUP)
                self._tell(signal.SIGHUP)  # each worker empties its DNS cache, and says so
            if not announced and len(self.ready) == self.count:
                announce()
                announced = True
        self._stop()
        return status

    def _signalled(self, number: int, _frame: object) -> None:
        self.signals.add(number)  # the wakeup descriptor has woken the loop already

    def _until_due(self) -> float:
        """Seconds the loop may sleep: until the next worker is due, a second at most."""
        if not self.due:
            return 1.0
        return max(0.0, min(1.0, min(self.due.values()) - time.monotonic()))

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a worker's word that it serves, or ``timeout`` seconds."""
        with contextlib.suppress(InterruptedError):
            select.select([self.wake_r, self.ready_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass
        said = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.ready_r, 4096):
                said += chunk
        for word in said.split():
            pid = int(word)
            if pid in self.workers:
                self.ready.add(pid)

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot, due in sorted(self.due.items()):
            if due <= now:
                del self.due[slot]
                self._fork(slot)

    def _fork(self, slot: int) -> None:
        """Start worker ``slot``; signals wait until it has its own handlers."""
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:
                self._work(slot)  # never returns
        except OSError as exc:  # out of processes or memory: counts as a quick death
            self.quick += 1
            self.due[slot] = time.monotonic() + RESTART_PAUSE
            _say(f"cannot start a worker: {describe(exc)}; trying again in {RESTART_PAUSE:g} s")
            return
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        self.workers[pid] = (slot, time.monotonic())

    def _work(self, slot: int) -> NoReturn:
        """In the worker: serve until SIGTERM, then end (never back into the parent's code)."""
        status = 70  # EX_SOFTWARE: a worker that fails to start
        try:
            for fd in self.private:
                os.close(fd)
            signal.set_wakeup_fd(-1)
            self._die_with_parent()
            global _speaker
            _speaker = f"qqfilter serve: worker {os.getpid()}: "
            hook = os.environ.get(WORKER_EXIT)
            if hook:  # the tests' broken install
                status = int(hook)
            else:
                self._serve(slot)
                status = 0
        except BaseException as exc:  # a worker that cannot serve: one line, and it ends
            _say(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            os._exit(status)

    def _serve(self, slot: int) -> None:
        """In the worker: its Server, its signals, its word to the parent, then serving."""
        server = self.make(slot)
        if server.metrics is not None:
            from qqfilter import pipeline

            pipeline.OBSERVER = server.metrics
        signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: server.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: _reload())
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        os.write(self.ready_w, f"{os.getpid()}\n".encode())
        os.close(self.ready_w)
        server.run()

    def _die_with_parent(self) -> None:
        """Have the kernel kill this worker when the parent ends, even by SIGKILL: no orphan
        keeps serving old code on a socket a new server may want."""
        if self.libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            import ctypes  # the parent's, already loaded

            number = ctypes.get_errno()
            raise OSError(number, f"prctl(PR_SET_PDEATHSIG): {os.strerror(number)}")
        if os.getppid() != self.pid:  # the parent ended before prctl: nobody sends it
            os._exit(0)

    def _reap(self) -> None:
        """Collect the workers that have ended: a line for each, and its replacement due."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            entry = self.workers.pop(pid, None)
            if entry is None:
                continue
            slot, born = entry
            self.spent += usage.ru_utime + usage.ru_stime
            self.ready.discard(pid)
            if self.ended is not None:
                self.ended(pid)
            lived = time.monotonic() - born
            how = _ending(status)
            if self.stopping or self.quick >= QUICK_DEATHS:  # the parent is giving up
                if status:
                    _say(f"worker {pid} {how} while stopping")
                continue
            pause = 0.0
            if lived < QUICK_DEATH:
                self.quick += 1
                pause = RESTART_PAUSE
            else:
                self.quick = 0
            if self.quick >= QUICK_DEATHS:
                _say(f"worker {pid} {how} {lived:.1f} s after its start")
                continue
            self.due[slot] = time.monotonic() + pause
            if pause:
                _say(
                    f"worker {pid} {how} {lived:.1f} s after its start; starting another in "
                    f"{pause:g} s ({self.quick} in a row so quickly; at {QUICK_DEATHS} the "
                    "server gives up)"
                )
            else:
                _say(f"worker {pid} {how} after {lived:.0f} s; starting another")

    def _tell(self, number: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)

    def _stop(self) -> None:
        """Stop listening, tell every worker to stop, and wait for them: each lets its
        messages in work finish for at most --grace seconds."""
        self.stopping = True
        self.due.clear()
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):  # removed by hand: gone all the same
            os.unlink(self.path)
        self._tell(signal.SIGTERM)
        give_up = time.monotonic() + self.grace + STOP_MARGIN
        while self.workers and time.monotonic() < give_up:
            self._wait(min(1.0, max(0.0, give_up - time.monotonic())))
            self._reap()
        if self.workers:
            _say(
                f"{len(self.workers)} workers still running {self.grace + STOP_MARGIN:g} s "
                "after SIGTERM: killing them"
            )
            self._tell(signal.SIGKILL)
            for pid in list(self.workers):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self.workers.pop(pid, None)
                if self.ended is not None:
                    self.ended(pid)
        signal.set_wakeup_fd(-1)
        self.close()


def shares(total: int, workers: int) -> list[int]:
    """``total`` (--max, --connections) shared out between ``workers``, as evenly as may be,
    at least 1 each (so past ``total`` workers, the sum is more than asked)."""
    return [max(1, total // workers + (slot < total % workers)) for slot in range(workers)]


def default_workers(limit: int, connections: int) -> int:
    """--workers when not given: the CPUs this process may use, but no more than --max or
    --connections (each worker needs one of each: asking for fewer keeps the whole figure)."""
    return max(1, min(len(os.sched_getaffinity(0)), limit, connections, MAX_WORKERS))


def listen(path: str, group: int | None) -> socket.socket:
    """The listening socket at ``path`` (0600; 0660 and ``group``'s, given a group);
    StartError, in words, when there cannot be one."""
    try:
        _clear(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except (OSError, ValueError) as exc:
        raise StartError(f"{path}: cannot listen there: {_words(exc)}") from None
    bound = False
    try:
        old = os.umask(0o177 if group is None else 0o117)
        try:
            listener.bind(path)
            bound = True
        finally:
            os.umask(old)
        if group is not None:
            os.chown(path, -1, group)
        listener.listen(128)
    except (OSError, ValueError) as exc:
        listener.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise StartError(f"{path}: cannot listen there: {_words(exc)}") from None
    listener.settimeout(0.2)
    return listener


def _clear(path: str) -> None:
    """Remove a socket left at ``path`` by a server that died; StartError when another
    server answers there, or ``path`` is something else (never removed)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartError(f"{path}: exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:  # left by a server that died: nobody answers
            os.unlink(path)
            return
        except OSError as exc:  # EACCES, a socket of another type: not ours to take
            raise StartError(
                f"{path}: cannot tell whether a server answers there: {_words(exc)}"
            ) from None
    raise StartError(f"{path}: another server answers there")


def _preload() -> None:
    """Import what the messages need, once: each check unit's PRELOAD, and ours."""
    from qqfilter.checks import units

    for name in (*PRELOAD, *(name for unit in units() for name in unit.preload)):
        # a C library may be missing (libmagic, libarchive13: ctypes fails with OSError or
        # AttributeError, not ImportError): the checks cope, and say so per message
        with contextlib.suppress(ImportError, OSError, AttributeError):
            __import__(name)


def _descriptors(connections: int, each: int, workers: int) -> None:
    """Warn when ``each`` connections (a worker's share of ``connections``) may need more
    descriptors than a process may have."""
    descriptors, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if each * FDS_PER_CONNECTION + 32 <= descriptors:
        return
    if workers == 1:
        need = (
            f"--connections {connections} may need {connections * FDS_PER_CONNECTION} descriptors"
        )
    else:
        need = (
            f"--connections {connections} ({each} in each of {workers} workers) may need "
            f"{each * FDS_PER_CONNECTION} descriptors in each worker"
        )
    _say(
        f"{need}, and the limit is {descriptors}: raise it (ulimit -n) or lower --connections; "
        "the server pauses while it has none"
    )


def _ending(status: int) -> str:
    """How a worker ended, from wait's ``status``."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "?"
    return f"was killed by signal {-code} ({name})"


def _multiprocess(directory: str) -> None:
    """Put prometheus_client in multiprocess mode over ``directory``, or out of it ("")."""
    os.environ.pop("prometheus_multiproc_dir", None)  # its old name: not ours to follow
    if directory:
        os.environ[MULTIPROCESS_DIRECTORY] = directory
    else:
        os.environ.pop(MULTIPROCESS_DIRECTORY, None)


def _metrics_directory(directory: str) -> None:
    """Make ``directory`` (0700) for the workers' metrics files, or empty the one left by a
    server that was killed; StartError when it is something else."""
    try:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            info = os.lstat(directory)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise StartError(
                    f"{directory}: exists and is not a directory of this user's; not using it"
                ) from None
            os.chmod(directory, 0o700)
            _empty(directory, remove=False)
    except OSError as exc:
        raise StartError(f"{directory}: cannot keep the metrics there: {_words(exc)}") from None


def _empty(directory: str, remove: bool = True) -> None:
    """Remove the metrics files in ``directory`` (and it, when ``remove``)."""
    if not directory:
        return
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.unlink(os.path.join(directory, name))
        if remove:
            os.rmdir(directory)


def _forgetting(directory: str) -> Callable[[int], None]:
    from qqfilter.resident.metrics import worker_ended

    return lambda pid: worker_ended(pid, directory)


def _metrics_address(address: str, public: bool) -> tuple[str, int]:
    """The host and port --metrics ``address`` names. StartError when prometheus_client is
    missing, or ``address`` is no address or, unless ``public``, not a loopback one."""
    try:
        from qqfilter.resident.metrics import parse_address
    except ImportError as exc:
        raise StartError(
            f"--metrics needs the prometheus_client package ({exc}): "
            "pip install 'qqfilter[metrics]'"
        ) from None
    try:
        return parse_address(address, public)
    except ValueError as exc:
        raise StartError(str(exc)) from None


def _instruments() -> Metrics:
    """The metrics of the process that decides the messages (not served by it yet)."""
    from qqfilter.checks import units
    from qqfilter.resident.metrics import Metrics

    return Metrics([unit.name for unit in units()])


def _show(registry: CollectorRegistry, host: str, port: int) -> tuple[HTTPServer, str]:
    """Serve ``registry`` on ``host``:``port``; the HTTP server, and the words for the ready
    line. StartError when the port cannot be had."""
    from qqfilter.resident.metrics import publish

    try:
        httpd, host, port = publish(registry, host, port)
    except OSError as exc:
        raise StartError(f"--metrics {_bracketed(host)}:{port}: {_words(exc)}") from None
    return httpd, f", metrics on http://{_bracketed(host)}:{port}/metrics"


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


_speaker = "qqfilter serve: "
"""What the server's own lines begin with; a worker's name their pid too."""


def _say(text: str) -> None:
    logline.write_line(f"{_speaker}{text}")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``serve`` subcommand."""
    serve_parser = sub.add_parser(
        "serve", help="run resident, for QMAILQUEUE clients on a unix socket (QQF_SOCKET)"
    )
    serve_parser.add_argument(
        "--socket", default=os.environ.get("QQF_SOCKET", ""), help="the socket (QQF_SOCKET)"
    )
    serve_parser.add_argument(
        "--workers",
        type=_workers,
        default=0,
        metavar="N",
        help="processes deciding messages, sharing the socket and the limits below (the CPUs "
        "it may use, at most --max and --connections; 1: this process alone)",
    )
    serve_parser.add_argument(
        "--max",
        type=_count,
        default=16,
        help="messages under the checks at once, the whole server's (16; shared out between "
        "the workers, at least 1 each)",
    )
    serve_parser.add_argument(
        "--wait", type=_seconds, default=10.0, help="seconds a client may wait for a turn (10)"
    )
    serve_parser.add_argument(
        "--connections",
        type=_count,
        default=100,
        help="connections served at once, spooling included; more wait in the backlog (100; "
        "the whole server's, shared out between the workers, at least 1 each)",
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


def _workers(text: str) -> int:
    """--workers: a whole number from 1 to MAX_WORKERS."""
    value = _count(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_WORKERS}")
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
            workers=options.workers or default_workers(options.max, options.connections),
        )
    except StartError as exc:
        _say(str(exc))
        return USAGE_ERROR
    except KeyboardInterrupt:  # Ctrl-C while it starts (after that, SIGINT stops it)
        return 130

"""clamd: stream the message to the first clamd of QQF_CLAMD that answers (INSTREAM).

The protocol client, with its deadlines and failover, is instream.py; what a refusal or an
undecided scan looks like is shared with QHPSI (qqfilter.checks.virus).
"""

import time

from qqfilter.checks import Finding
from qqfilter.checks.virus import SCANSKIP, SCANTIMEOUT, SHARED, infected, skip_reason, undecided
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, byte_count, seconds, server_list
from qqfilter.shared import hostport

NAME = "clamd"
ORDER = 50
DEFAULT_PORT = 3310


def endpoint(server: str) -> str | tuple[str, int]:
    """Where one entry of QQF_CLAMD is: a unix socket's path, or (host, port). Raises
    ValueError for an entry that is neither ``unix:/path``, ``/path``, ``host:port``,
    ``[v6]:port`` nor ``host``."""
    return hostport.socket_or_host(server, DEFAULT_PORT)


CLAMD: Setting[tuple[str, ...]] = Setting(
    "clamd",
    "QQF_CLAMD",
    (),
    server_list(
        lambda value: hostport.servers(value, "clamd", endpoint), "unix:/path or host:port"
    ),
    "clamd servers to scan with, tried in order: comma list of unix:/path or host:port",
    server_only=True,
)
CLAMDCONNECT = Setting(
    "clamdconnect",
    "QQF_CLAMDCONNECT",
    5.0,
    seconds,
    "seconds to wait for a connection to one clamd before trying the next",
)
CLAMDTIMEOUT = Setting(
    "clamdtimeout",
    "QQF_CLAMDTIMEOUT",
    60.0,
    seconds,
    "seconds a clamd may go without taking data or answering before the next is tried",
)
CLAMDMAXSIZE = Setting(
    "clamdmaxsize",
    "QQF_CLAMDMAXSIZE",
    0,
    byte_count,
    "skip clamd (logged) for messages larger than this many bytes; 0 = scan all",
)
SETTINGS = (CLAMD, CLAMDCONNECT, CLAMDTIMEOUT, CLAMDMAXSIZE, *SHARED)
PRELOAD = ("qqfilter.checks.virus.clamd.instream",)


def check(message: Message, settings: Settings) -> Finding | None:
    """Scan with the first clamd that answers; refuse what it finds."""
    servers = settings[CLAMD]
    if not servers:
        return None
    skipped = skip_reason(message, settings[SCANSKIP], 0, settings[CLAMDMAXSIZE])
    if skipped:
        return Finding(NAME, Finding.CLEAN, skipped)
    from qqfilter.checks.virus.clamd import instream

    answer = instream.scan(
        message.spool.fd,
        message.size,
        servers,
        connect_timeout=settings[CLAMDCONNECT],
        timeout=settings[CLAMDTIMEOUT],
        deadline=time.monotonic() + settings[SCANTIMEOUT],
    )
    if answer.result == instream.INFECTED:
        failed_over = f" after {answer.why}" if answer.why else ""
        return infected(NAME, answer.name, f"found by {answer.server}{failed_over}")
    if answer.result == instream.UNKNOWN:
        return undecided(NAME, answer.why)
    if answer.why:
        return Finding(NAME, Finding.CLEAN, f"clean by {answer.server} after {answer.why}")
    return None

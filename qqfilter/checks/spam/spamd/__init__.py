"""spamd: ask the first SpamAssassin spamd of QQF_SPAMD that answers for the message's score.

The protocol client, with its deadlines and failover, is spamc.py, imported inside ``check``
so that a server with QQF_SPAMD empty pays nothing for it. What a score becomes (refusal,
headers, the skips, an undecided scan) is the spam family's (qqfilter.checks.spam), shared
with rspamd, and so is the whole scan's deadline (QQF_SPAMTIMEOUT); this unit adds only where
spamd is and how long one spamd may take.
"""

import time

from qqfilter.checks import Finding
from qqfilter.checks.spam import SHARED, SPAMTIMEOUT, Score, judge, skip_reason, undecided, user
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, seconds, server_list
from qqfilter.shared import hostport

NAME = "spamd"
ORDER = 70
DEFAULT_PORT = 783


def endpoint(server: str) -> str | tuple[str, int]:
    """Where one entry of QQF_SPAMD is: a unix socket's path, or (host, port). Raises
    ValueError for an entry that is neither ``unix:/path``, ``/path``, ``host:port``,
    ``[v6]:port`` nor ``host`` (port 783, spamd's)."""
    return hostport.socket_or_host(server, DEFAULT_PORT)


SPAMD: Setting[tuple[str, ...]] = Setting(
    "spamd",
    "QQF_SPAMD",
    (),
    server_list(
        lambda value: hostport.servers(value, "spamd", endpoint), "unix:/path or host:port"
    ),
    "spamd servers to score mail with, tried in order: comma list of unix:/path or host:port "
    "(default port 783); empty = no spamd scan",
    server_only=True,
)
SPAMDCONNECT = Setting(
    "spamdconnect",
    "QQF_SPAMDCONNECT",
    5.0,
    seconds,
    "seconds to wait for a connection to one spamd before trying the next",
)
SPAMDTIMEOUT = Setting(
    "spamdtimeout",
    "QQF_SPAMDTIMEOUT",
    60.0,
    seconds,
    "seconds a spamd may go without taking data or answering before the next is tried",
)
SETTINGS = (SPAMD, SPAMDCONNECT, SPAMDTIMEOUT, *SHARED)
PRELOAD = ("qqfilter.checks.spam.spamd.spamc",)


def check(message: Message, settings: Settings) -> Finding | None:
    """Score the message with the first spamd that answers; the family judges the score."""
    servers = settings[SPAMD]
    if not servers:
        return None
    skipped = skip_reason(message, settings)
    if skipped:
        return Finding(NAME, Finding.CLEAN, skipped)
    from qqfilter.checks.spam.spamd import spamc

    answer = spamc.scan(
        message.spool,
        message.size,
        servers,
        user=user(message, settings),
        connect_timeout=settings[SPAMDCONNECT],
        timeout=settings[SPAMDTIMEOUT],
        deadline=time.monotonic() + settings[SPAMTIMEOUT],
    )
    score = answer.score
    if score is None:
        return undecided(NAME, answer.why, settings)
    where = f"by {answer.server} after {answer.why}" if answer.why else f"by {answer.server}"
    finding = judge(NAME, score, settings, _detail(score, where), message)
    if finding.outcome == Finding.CLEAN and answer.why:
        finding.reason = f"{finding.reason} {where}"  # the failover goes into the note
    return finding


def _detail(score: Score, where: str) -> str:
    """The log's detail for a refusal: the score, the rules that fired, which spamd."""
    tests = ",".join(score.tests) or "none"
    return f"score={score.score:.1f} required={score.required:.1f} tests={tests} {where}"

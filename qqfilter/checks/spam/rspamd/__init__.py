"""rspamd: score the message with the first rspamd of QQF_RSPAMD that answers (POST /checkv2).

rspamd decides by its own action: "reject" refuses, "soft reject"/"greylist" tempfail, the
rest is accepted with SpamAssassin-style fields, X-Spam-Action and the fields rspamd's milter
block asks for; what that means is the family's (qqfilter.checks.spam). The HTTP client, its
deadlines and failover are checkv2.py, imported only when QQF_RSPAMD names a server: this
module's top level costs nothing beyond the settings every message reads.

The whole-scan deadline is the family's QQF_SPAMTIMEOUT (in SHARED: the same object as the
spamd unit's, so settings.load reads it once).
"""

from qqfilter.checks import Finding
from qqfilter.checks.spam import SHARED, SPAMTIMEOUT, Score, judge, skip_reason, undecided, user
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, seconds, server_list
from qqfilter.shared import hostport

NAME = "rspamd"
ORDER = 75
DEFAULT_PORT = 11333
SCHEME = "http://"


def endpoint(url: str) -> tuple[str, int]:
    """(host, port) of one entry of QQF_RSPAMD: ``http://host:port``, ``http://[v6]:port``
    or ``http://host`` (port 11333), one trailing slash allowed. Raises ValueError."""
    if not url.lower().startswith(SCHEME):
        raise ValueError(f"{url!r}: expected http://host:port")
    rest = url[len(SCHEME) :]
    rest = rest[:-1] if rest.endswith("/") else rest
    if not rest or any(c in rest for c in "/?#@ \t"):
        raise ValueError(f"{url!r}: expected http://host:port")
    try:
        return hostport.split(rest, DEFAULT_PORT)
    except ValueError:
        raise ValueError(f"{url!r}: expected http://host:port") from None


def settings_id(value: object) -> str:
    """rspamd's Settings-ID: a name (letters, digits, ``_.-``), or empty for none."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("must be a settings id (letters, digits, _ . -) or empty")
    if any(not (c.isascii() and (c.isalnum() or c in "_.-")) for c in value):
        raise ValueError("must be a settings id (letters, digits, _ . -) or empty")
    return value


RSPAMD: Setting[tuple[str, ...]] = Setting(
    "rspamd",
    "QQF_RSPAMD",
    (),
    server_list(lambda value: hostport.servers(value, "rspamd", endpoint), "http://host:port"),
    "rspamd normal workers to scan with, tried in order: comma list of http://host:port",
    server_only=True,
)
RSPAMDSETTINGS = Setting(
    "rspamdsettings",
    "QQF_RSPAMDSETTINGS",
    "",
    settings_id,
    "rspamd settings id to scan with (its Settings-ID header); empty = rspamd's own choice",
)
RSPAMDCONNECT = Setting(
    "rspamdconnect",
    "QQF_RSPAMDCONNECT",
    5.0,
    seconds,
    "seconds to wait for a connection to one rspamd before trying the next",
)
RSPAMDTIMEOUT = Setting(
    "rspamdtimeout",
    "QQF_RSPAMDTIMEOUT",
    60.0,
    seconds,
    "seconds an rspamd may go without taking data or answering before the next is tried",
)
SETTINGS = (RSPAMD, RSPAMDSETTINGS, RSPAMDCONNECT, RSPAMDTIMEOUT, *SHARED)
PRELOAD = ("qqfilter.checks.spam.rspamd.checkv2",)


def check(message: Message, settings: Settings) -> Finding | None:
    """Score the message with the first rspamd that answers; the family judges its answer."""
    servers = settings[RSPAMD]
    if not servers:
        return None
    skipped = skip_reason(message, settings)
    if skipped:
        return Finding(NAME, Finding.CLEAN, skipped)
    import time

    from qqfilter.checks.spam.rspamd import checkv2

    answer = checkv2.scan(
        message.spool,
        servers,
        checkv2.request_headers(message, settings[RSPAMDSETTINGS], user(message, settings)),
        connect_timeout=settings[RSPAMDCONNECT],
        timeout=settings[RSPAMDTIMEOUT],
        deadline=time.monotonic() + settings[SPAMTIMEOUT],
    )
    score = answer.score
    if score is None:
        return undecided(NAME, answer.why, settings)
    where = f"by {answer.server} after {answer.why}" if answer.why else f"by {answer.server}"
    finding = judge(NAME, score, settings, _detail(score, answer.message, where), message)
    if finding.outcome == Finding.CLEAN and answer.why:
        finding.reason = f"{finding.reason} {where}"  # the failover goes into the note
    return finding


def _detail(score: Score, said: str, where: str) -> str:
    """The log's detail for a refusal or a hold: score, action, symbols, rspamd's own words
    (its smtp_message), which rspamd."""
    tests = ",".join(score.tests) or "none"
    words = f" message={said!r}" if said else ""
    return (
        f"score={score.score:.1f} required={score.required:.1f} "
        f"action={score.action.replace(' ', '_')} tests={tests}{words} {where}"
    )

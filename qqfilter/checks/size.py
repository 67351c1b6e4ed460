"""Size: refuse a message larger than the administrator allows (QQF_MAXSIZE).

The smallest check unit, and the example docs/architecture.md walks through: a name, an order,
the one setting it owns, and ``check``.
"""

from __future__ import annotations

from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, byte_count

NAME = "size"
ORDER = 10
MAXSIZE = Setting(
    "maxsize",
    "QQF_MAXSIZE",
    0,
    byte_count,
    "refuse messages larger than this many bytes; 0 = no limit",
)
SETTINGS = (MAXSIZE,)
PRELOAD = ()


def spool_limit(settings: Settings) -> int:
    """How much of a message the spool keeps (0 = all): one byte past the limit proves a
    message over it, and the rest need not fill the spool's disk (the QMAILQUEUE program and
    the dry run both receive with it)."""
    limit = settings[MAXSIZE]
    return limit + 1 if limit else 0


def check(message: Message, settings: Settings) -> Finding | None:
    """Refuse when the message is over ``maxsize`` bytes (0 = no limit)."""
    limit = settings[MAXSIZE]
    if not limit or message.size <= limit:
        return None
    return Finding(
        NAME,
        Finding.REFUSE,
        f"message is {message.size} bytes, over the limit of {limit}",
        tag="Reject::DATA::Invalid_Size",
        status="5.3.4",
    )

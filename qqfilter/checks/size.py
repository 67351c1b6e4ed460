"""QQF_MAXSIZE: refuse a message larger than the administrator allows."""

from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import Settings


def check(message: Message, settings: Settings) -> Finding | None:
    """Refuse when the message is over ``maxsize`` bytes (0 = no limit)."""
    limit = settings.maxsize
    if not limit or message.size <= limit:
        return None
    return Finding(
        "size",
        Finding.REFUSE,
        f"message is {message.size} bytes, over the limit of {limit}",
        tag="Reject::DATA::Invalid_Size",
        status="5.3.4",
    )

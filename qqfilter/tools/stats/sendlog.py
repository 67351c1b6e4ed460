"""qmail-send's log: the bounces this server generated, to whom, and how their delivery went.

qmail-send logs ``bounce msg M qp Q`` when it bounces message M; the bounce itself is then
queued with that qp, and appears as ``info msg B: bytes N from <> qp Q uid U``. Deliveries of
B (``starting delivery D: msg B to remote R``, then ``delivery D: success|failure|deferral``)
are the backscatter this server sends, until ``end msg B`` (qmail reuses message numbers: they
are inode numbers). Counting them per day, before and after a check is switched on, shows
what the check saves.

A module of its own under ``stats``: another program's log, followed across lines (a bounce's
qp, then its message number, then its deliveries), which qqfilter's own lines never need.
"""

import re
from collections import Counter, defaultdict

_BOUNCE = re.compile(r"^bounce msg (\d+) qp (\d+)")
_INFO = re.compile(r"^info msg (\d+): bytes \d+ from <([^>]*)> qp (\d+)")
_START = re.compile(r"^starting delivery (\d+): msg (\d+) to (?:remote|local) (\S+)")
_RESULT = re.compile(r"^delivery (\d+): (success|failure|deferral)")
_END = re.compile(r"^end msg (\d+)")


class Bounces:
    """What the qmail-send lines said about generated bounces, per period."""

    def __init__(self) -> None:
        self.generated: Counter[str] = Counter()
        self.results: dict[str, Counter[str]] = defaultdict(Counter)
        self.recipients: Counter[str] = Counter()
        self.seen = False
        self._bounce_qps: set[str] = set()
        self._bounce_msgs: set[str] = set()
        self._deliveries: dict[str, str] = {}

    def feed(self, text: str, period: str) -> None:
        """Take one qmail-send line (other lines are ignored)."""
        if match := _BOUNCE.match(text):
            self.seen = True
            self._bounce_qps.add(match.group(2))
        elif match := _INFO.match(text):
            self.seen = True
            message, sender, qp = match.groups()
            if sender == "" and qp in self._bounce_qps:
                self._bounce_qps.discard(qp)
                self._bounce_msgs.add(message)
                self.generated[period] += 1
        elif match := _START.match(text):
            self.seen = True
            delivery, message, recipient = match.groups()
            if message in self._bounce_msgs:
                self._deliveries[delivery] = message
                self.recipients[recipient] += 1
        elif match := _RESULT.match(text):
            self.seen = True
            delivery, result = match.groups()
            if self._deliveries.pop(delivery, None) is not None:
                self.results[period][result] += 1
        elif match := _END.match(text):
            # message numbers are inode numbers: the next message to get this one is not a bounce
            self._bounce_msgs.discard(match.group(1))

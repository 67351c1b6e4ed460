"""Reading logs back: multilog's TAI64N stamps, gzip'ed rotations, qqfilter's own lines.

A log line may carry a TAI64N label (``@4000000069...``, what ``multilog t`` writes) and
anything before the text. qqfilter's lines are found by their ``qqfilter:`` mark (text) or as
a JSON object with a ``verdict``; everything else is handed on as it is (qmail-send's lines).

A module of its own under ``stats``: reading lines and stamps off a log is apart from counting
what the lines say, and the same for every kind of line.
"""

import gzip
import json
import shlex
import sys
from collections.abc import Iterator

TAI64_EPOCH = 2**62 + 10
"""TAI64 label of the Unix epoch, as daemontools writes it (TAI was 10 s ahead in 1970)."""


class Line:
    """One log line: its time (Unix seconds, or None) and its text after the stamp."""

    __slots__ = ("text", "time")

    def __init__(self, time: float | None, text: str) -> None:
        self.time = time
        self.text = text


def lines(paths: list[str]) -> Iterator[Line]:
    """The lines of every file (``-`` is stdin; ``.gz`` files are read through gzip)."""
    for path in paths:
        if path == "-":
            for raw in sys.stdin:
                yield split_stamp(raw.rstrip("\n"))
            continue
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as stream:
            for raw in stream:
                yield split_stamp(raw.rstrip("\n"))


def split_stamp(raw: str) -> Line:
    """``raw`` with a leading TAI64N label read off as the time."""
    if raw.startswith("@") and len(raw) >= 25:
        label = raw[1:25]
        try:
            seconds = int(label[:16], 16) - TAI64_EPOCH + int(label[16:], 16) / 1e9
        except ValueError:
            return Line(None, raw)
        return Line(seconds, raw[25:].lstrip())
    return Line(None, raw)


def qqfilter_fields(text: str) -> dict[str, str] | None:
    """The fields of a qqfilter log line (text or JSON), or None for any other line."""
    mark = text.find("qqfilter: ")
    if mark >= 0:
        try:
            words = shlex.split(text[mark + len("qqfilter: ") :])
        except ValueError:
            return None
        fields = dict(word.partition("=")[::2] for word in words if "=" in word)
        return fields if "verdict" in fields else None
    brace = text.find("{")
    if brace >= 0 and '"verdict"' in text:
        try:
            record = json.loads(text[brace:])
        except ValueError:
            return None
        if isinstance(record, dict) and "verdict" in record:
            return {str(k): str(v) for k, v in record.items()}
    return None

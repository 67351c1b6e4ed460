"""The envelope qmail writes on descriptor 1: ``F<sender>\\0``, ``T<rcpt>\\0``..., ``\\0``.

Parsed exactly as qmail-queue parses it, so that anything qmail-queue would refuse is refused
here with the same code, and the bytes handed on are the bytes read.
"""

import os

from qqfilter.exitcodes import ADDRESS_TOO_LONG, ENVELOPE_FORMAT, READ_ERROR, QueueError

MAX_ADDRESS = 1000
"""Longest address accepted, in bytes (qmail-queue's own buffer holds 1003)."""


class Envelope:
    """A parsed envelope: the raw bytes, the sender and the recipients."""

    __slots__ = ("raw", "recipients", "sender")

    def __init__(self, raw: bytes, sender: bytes, recipients: list[bytes]) -> None:
        self.raw = raw
        self.sender = sender
        self.recipients = recipients


def serialize(sender: bytes, recipients: list[bytes]) -> bytes:
    """The envelope bytes qmail would write for ``sender`` and ``recipients``."""
    return b"F" + sender + b"\0" + b"".join(b"T" + r + b"\0" for r in recipients) + b"\0"


def parse(data: bytes) -> Envelope:
    """Parse one complete envelope; bytes after its final NUL are ignored, as qmail-queue does.

    Raises QueueError: 91 for a malformed envelope, 54 when it ends early, 11 for an address
    over MAX_ADDRESS bytes.
    """
    if not data.startswith(b"F"):
        if not data:
            raise QueueError(READ_ERROR, "envelope: empty, the client gave up")
        raise QueueError(ENVELOPE_FORMAT, "envelope: does not start with a sender (F) record")
    sender, pos = _address(data, 1)
    recipients: list[bytes] = []
    while True:
        if pos >= len(data):
            raise QueueError(READ_ERROR, "envelope: ended before its final NUL")
        kind = data[pos]
        if kind == 0:
            break
        if kind != 0x54:  # "T"
            what = "a second sender" if kind == 0x46 else f"a junk record {bytes([kind])!r}"
            raise QueueError(ENVELOPE_FORMAT, f"envelope: {what} at byte {pos}")
        address, pos = _address(data, pos + 1)
        recipients.append(address)
    if not recipients:
        raise QueueError(ENVELOPE_FORMAT, "envelope: no recipient")
    return Envelope(data[: pos + 1], sender, recipients)


def _address(data: bytes, start: int) -> tuple[bytes, int]:
    """The address that starts at ``start``, and the position after its NUL."""
    end = data.find(b"\0", start, start + MAX_ADDRESS + 1)
    if end < 0:
        if len(data) - start > MAX_ADDRESS:
            raise QueueError(ADDRESS_TOO_LONG, f"envelope: address over {MAX_ADDRESS} bytes")
        raise QueueError(READ_ERROR, "envelope: ended inside an address")
    return data[start:end], end + 1


def read(fd: int = 1) -> Envelope:
    """Read and parse the envelope from ``fd``; a read error is 54.

    Stops at EOF or as soon as the bytes end in two NULs (an address's NUL, then the final
    one: no address holds a NUL), so a writer that keeps the descriptor open cannot stall us.
    """
    data = bytearray()
    while not data.endswith(b"\0\0"):
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:
            raise QueueError(READ_ERROR, f"envelope: cannot read fd {fd}: {exc.strerror}") from None
        if not chunk:
            break
        data += chunk
    return parse(bytes(data))

"""What qmail-smtpd wrote at the top of the message: the client's address and HELO name.

Stock qmail does not export the HELO name; qmail-smtpd writes it, through qmail's
``safeput`` (anything but letters, digits and ``.@%+/=:-`` becomes ``?``), as

    Received: from <remotehost> (HELO <helo>) (<remoteinfo>@<remoteip>)

leaving ``(HELO ...)`` out when the HELO name equalled the remote host name (TCPREMOTEHOST, or
"unknown"), and on the next line ``  by <me> with SMTP;``; the SMTP AUTH patches write the
protocol as RFC 3848's ``ESMTPA`` (``ESMTPSA`` over TLS) after a successful AUTH. A shared
building block: SPF believes only the first line of a message it is filtering, and only for
the connection's address, so a line the client wrote further down can never be taken for
it (nor by DKIM signing's test for an authenticated session); ``qqfilter replay`` looks for
the first such line anywhere in the headers of mail already received.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.spool import Spool

HEAD = 2048
LINE = re.compile(
    rb"^Received: from ([A-Za-z0-9.@%+/=:?-]*)(?: \(HELO ([A-Za-z0-9.@%+/=:?-]*)\))?"
    rb" \((?:[A-Za-z0-9.@%+/=:?-]*@)?([0-9A-Fa-f.:]+)\)\r?\n",
    re.MULTILINE | re.IGNORECASE,
)
"""qmail-smtpd's line: groups 1 the remote host, 2 the HELO name (None when it equalled the
remote host), 3 the remote address."""


_AUTHENTICATED = re.compile(rb"  by [^\r\n]* with (?:ESMTP|UTF8SMTP)S?A;", re.IGNORECASE)


def client(match: re.Match[bytes]) -> tuple[str, str]:
    """(address, HELO name) of a match of LINE."""
    helo = match.group(2) if match.group(2) is not None else match.group(1)
    return match.group(3).decode("ascii"), helo.decode("ascii")


def helo_from_message(spool: Spool, remote_ip: str) -> str | None:
    """The HELO name from qmail-smtpd's line at the top of ``spool``, or None when the
    message does not start with such a line for ``remote_ip``."""
    match = LINE.match(spool.read(0, HEAD))
    if not match:
        return None
    address, helo = client(match)
    return helo if address == remote_ip else None


def authenticated_session(spool: Spool, remote_ip: str) -> bool:
    """Whether qmail-smtpd's line at the top of ``spool`` (for ``remote_ip``) says the client
    authenticated (``with ESMTPA``)."""
    head = spool.read(0, HEAD)
    match = LINE.match(head)
    if not match or client(match)[0] != remote_ip:
        return False
    return _AUTHENTICATED.match(head, match.end()) is not None

"""What qmail-smtpd wrote at the top of the message: the HELO name in its Received line.

Stock qmail does not export the HELO name; qmail-smtpd writes it, through qmail's
``safeput`` (anything but letters, digits and ``.@%+/=:-`` becomes ``?``), as

    Received: from <remotehost> (HELO <helo>) (<remoteinfo>@<remoteip>)

leaving ``(HELO ...)`` out when the HELO name equalled the remote host name (TCPREMOTEHOST, or
"unknown"). Only that first line is read, and only when its address is the connection's, so
a line the client wrote further down can never be taken for it.
"""

import os
import re

HEAD = 2048
_LINE = re.compile(
    rb"Received: from ([A-Za-z0-9.@%+/=:?-]*)(?: \(HELO ([A-Za-z0-9.@%+/=:?-]*)\))?"
    rb" \((?:[A-Za-z0-9.@%+/=:?-]*@)?([A-Za-z0-9.:?-]+)\)\r?\n"
)


def helo_from_message(fd: int, remote_ip: str) -> str | None:
    """The HELO name from qmail-smtpd's line at the top of the spool file ``fd``, or None
    when the message does not start with such a line for ``remote_ip``."""
    match = _LINE.match(os.pread(fd, HEAD, 0))
    if not match or match.group(3).decode("ascii") != remote_ip:
        return None
    helo = match.group(2) if match.group(2) is not None else match.group(1)
    return helo.decode("ascii")

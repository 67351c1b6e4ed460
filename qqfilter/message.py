"""What the checks look at: the spooled message, its envelope, and the SMTP connection."""

from qqfilter.envelope import Envelope
from qqfilter.spool import Spool


class Connection:
    """Facts about the SMTP client that tcpserver and qmail-smtpd put in the environment.

    ``remote_ip`` is None for mail injected locally (no TCPREMOTEIP); ``relayclient`` is true
    when RELAYCLIENT is set at all, even to the empty string, as in qmail-smtpd. ``helo`` is
    set only where a patched qmail-smtpd exports it (HELOHOST, as s/qmail and spamcontrol do);
    otherwise the SPF check reads it from qmail-smtpd's Received line.
    """

    __slots__ = ("environ", "helo", "local_host", "relayclient", "remote_host", "remote_ip")

    def __init__(
        self,
        remote_ip: str | None = None,
        remote_host: str | None = None,
        local_host: str | None = None,
        relayclient: bool = False,
        helo: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.remote_ip = remote_ip
        self.remote_host = remote_host
        self.local_host = local_host
        self.relayclient = relayclient
        self.helo = helo
        self.environ = environ

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> "Connection":
        """The connection as tcpserver describes it; ``environ`` is kept for the programs a
        check runs (a QHPSI scanner sees what qmail-smtpd's child saw, also when a resident
        server runs it)."""
        return cls(
            remote_ip=environ.get("TCPREMOTEIP") or None,
            remote_host=environ.get("TCPREMOTEHOST") or None,
            local_host=environ.get("TCPLOCALHOST") or None,
            relayclient="RELAYCLIENT" in environ,
            helo=environ.get("HELOHOST") or None,
            environ=environ,
        )


class Message:
    """One message under inspection. Checks read it; none of them changes it.

    ``facts`` holds what one check worked out for a later one, under the first one's NAME:
    SPF's result, which DMARC aligns with; the DKIM signatures, verified once for the DKIM
    and DMARC checks both; and (``authserv-id``) the name the Authentication-Results field
    is stamped under, read from control/me once. Like every record on the queue path, a
    hand-written ``__slots__`` class: ``dataclasses`` costs about 10 ms of start-up, paid by
    every message."""

    __slots__ = ("connection", "envelope", "facts", "spool")

    def __init__(self, spool: Spool, envelope: Envelope, connection: Connection) -> None:
        self.spool = spool
        self.envelope = envelope
        self.connection = connection
        self.facts: dict[str, object] = {}

    @property
    def size(self) -> int:
        """Size in bytes, as received (more than the spool holds when a message over
        QQF_MAXSIZE was cut while it came in)."""
        return self.spool.received

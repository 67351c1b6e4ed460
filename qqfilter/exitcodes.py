"""The exit codes of the qmail-queue contract, and the replies qmail-smtpd makes of them.

qmail-smtpd waits for its queue program and turns the exit status into the answer to DATA
(qmail's ``qmail_close()``). These are the only statuses this program ever exits with; a
Python traceback (status 1) would reach the client as a useless "qq temporary problem".
"""

QUEUED = 0
ADDRESS_TOO_LONG = 11
REJECTED = 31
SQMAIL_VIRUS = 32
SQMAIL_SPAM = 33
SQMAIL_ATTACHMENT = 34
OUT_OF_MEMORY = 51
TIMEOUT = 52
WRITE_ERROR = 53
READ_ERROR = 54
CONFIG_ERROR = 55
NETWORK_ERROR = 56
TEMPFAILED = 71
INTERNAL_BUG = 81
CUSTOM_REPLY = 82
ENVELOPE_FORMAT = 91

REPLIES: dict[int, str] = {
    QUEUED: "250 ok",
    ADDRESS_TOO_LONG: "554 envelope address too long for qq (#5.1.3)",
    REJECTED: "554 mail server permanently rejected message (#5.3.0)",
    OUT_OF_MEMORY: "451 qq out of memory (#4.3.0)",
    TIMEOUT: "451 qq timeout (#4.3.0)",
    WRITE_ERROR: "451 qq write error or disk full (#4.3.0)",
    READ_ERROR: "451 qq read error (#4.3.0)",
    CONFIG_ERROR: "451 qq unable to read configuration (#4.3.0)",
    NETWORK_ERROR: "451 qq trouble making network connection (#4.3.0)",
    TEMPFAILED: "451 mail server temporarily rejected message (#4.3.0)",
    INTERNAL_BUG: "451 qq internal bug (#4.3.0)",
    ENVELOPE_FORMAT: "451 qq internal bug (#4.3.0)",
}


def reply_for(code: int) -> str:
    """The reply a stock qmail-smtpd sends for ``code`` (s/qmail words 32-34 its own way)."""
    if code in REPLIES:
        return REPLIES[code]
    if 11 <= code <= 40:
        return "554 qq permanent problem (#5.3.0)"
    return "451 qq temporary problem (#4.3.0)"


class QueueError(Exception):
    """A failure of the contract itself (input, spool, configuration, hand-off).

    Carries the exit code qmail-smtpd must see and the text for the log line.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def describe(exc: OSError) -> str:
    """The words for a failed system call in a log line: its strerror ("No such file or
    directory"), else what the exception says, else its type."""
    return exc.strerror or str(exc) or type(exc).__name__

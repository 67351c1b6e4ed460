"""The ``qqfilter`` command: with no arguments it is the QMAILQUEUE program (a client of the
resident server when QQF_SOCKET names one); subcommands serve people (``test``, ``config``,
``replay``, ``stats``, ``serve``). The queue path imports nothing it does not need."""

import os
import sys

WAITING = (
    b"qqfilter: reading a message on fd 0 and its envelope on fd 1, as qmail-smtpd hands them;"
    b" see qqfilter --help\n"
)
"""What ``qqfilter`` with no arguments says first when a person runs it at a terminal (fd 0
a tty): it is still the QMAILQUEUE program, and now waits for the message."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qqfilter`` command; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        if os.isatty(0):  # a person, not qmail-smtpd (whose fd 0 is a pipe)
            _say(WAITING)
        environ = dict(os.environ)
        fallback = ""
        if environ.get("QQF_SOCKET"):
            from qqfilter.resident import client

            # the compiled client (client.c) got this far: carry on, not from the start
            failed = os.environ.pop(client.FAILED, None)
            environ.pop(client.FAILED, None)
            answer = client.run(environ) if failed is None else client.resume(environ, failed)
            if isinstance(answer, int):
                return answer
            fallback = answer  # why the server could not do it: this process will, and says so
        from qqfilter.qmailqueue import run

        return run(environ, fallback)
    from qqfilter.tools import dispatch

    return dispatch(args)


def _say(text: bytes) -> None:
    """``text`` on stderr; a closed stderr loses it, never the message."""
    try:  # noqa: SIM105 (contextlib is an import the queue path does without)
        os.write(2, text)
    except OSError:
        pass

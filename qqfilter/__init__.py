"""qqfilter: a content filter for qmail, run as the QMAILQUEUE program."""

__version__ = "0.1.0"

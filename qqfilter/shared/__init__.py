"""Building blocks that several checks use (DNS, server lists, qmail-smtpd's Received line):
shared, so they are not any one check's private helpers."""

"""Resident mode: ``qqfilter serve`` (server.py) decides, the QMAILQUEUE client (client.py)
performs, and wire.py is the one description of what passes between them."""

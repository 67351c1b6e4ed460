"""Server lists in settings: ``host``, ``host:port``, ``[v6address]:port``, comma-separated.

One reading for every setting that names servers (QQF_CLAMD, QQF_SPAMD, QQF_DNS), so they
take the same spellings and give the same errors.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def servers(value: str, what: str, check: Callable[[str], object]) -> tuple[str, ...]:
    """The non-empty entries of the comma list ``value``, each passed through ``check``
    (which raises ValueError for a bad one); ValueError when there are none."""
    found = tuple(item.strip() for item in value.split(",") if item.strip())
    if not found:
        raise ValueError(f"must name at least one {what}")
    for entry in found:
        check(entry)
    return found


def split(entry: str, default_port: int) -> tuple[str, int]:
    """(host, port) of one entry; a bare host or ``[v6address]`` takes ``default_port``.

    Raises ValueError when the brackets or the port are wrong.
    """
    host, port = entry, str(default_port)
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{entry!r}: expected [address]:port")
        port = rest[1:] or port
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    if not host or not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r}: expected host:port")
    return host, int(port)


def socket_or_host(server: str, default_port: int) -> str | tuple[str, int]:
    """Where one entry of a scanner's server list is (QQF_CLAMD, QQF_SPAMD): a unix
    socket's path (``unix:/path`` or ``/path``), or (host, port), ``default_port`` for a
    bare host. Raises ValueError for anything else."""
    if server.startswith("unix:") or server.startswith("/"):
        path = server.removeprefix("unix:")
        if not path.startswith("/") or "\0" in path:
            raise ValueError(f"{server!r}: a unix socket needs an absolute path")
        return path
    try:
        return split(server, default_port)
    except ValueError as exc:
        raise ValueError(str(exc).replace("host:port", "unix:/path or host:port")) from None

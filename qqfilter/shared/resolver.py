"""DNS for the checks: a dnspython resolver on QQF_DNS or the system's resolv.conf.

A shared building block: the setting QQF_DNS is declared here, and each check unit that
looks names up lists it in its SETTINGS (SPF, the sender hygiene family; next DKIM/DMARC).
dnspython is imported on the first lookup, never at start-up.

In a resident server the cache lives as long as the server, and both what goes in and how
long it stays are the sender's to choose (a new SPF domain per message, large TXT records, a
TTL of a week): it is an LRU of CACHE_ENTRIES answers, an answer larger than BIG_ANSWER is
not kept, and none is kept longer than MAX_TTL.

pyspf looks names up through its module-level ``DNSLookup`` function; ``lookup`` is a
replacement bound to our resolver. It asks the same questions pyspf's own dnspython adapter
asks, but with ``resolve`` (not the deprecated ``query``, whose warnings would reach the log),
without search domains (SPF names are absolute), and it maps every DNS failure to pyspf's
TempError, so nothing from dnspython escapes as an exception.
"""

from __future__ import annotations

from qqfilter.settings import Setting, server_list
from qqfilter.shared import dnsimport, hostport

TYPE_CHECKING = False
if TYPE_CHECKING:
    import dns.resolver


def parse_servers(value: str) -> tuple[str, ...]:
    """``ip``, ``ip:port``, ``v6ip`` or ``[v6ip]:port``, comma-separated; ValueError if not."""
    return hostport.servers(value, "DNS server", _host_port)


DNS: Setting[tuple[str, ...]] = Setting(
    "dns",
    "QQF_DNS",
    (),
    server_list(parse_servers, "ip or ip:port"),
    "DNS servers for SPF and the sender hygiene checks: comma list of ip or ip:port; "
    "empty = those of /etc/resolv.conf",
    server_only=True,
)


def _host_port(server: str) -> tuple[str, int]:
    bare_v6 = server.count(":") > 1 and not server.startswith("[")  # all of it is the host
    host, port = (server, 53) if bare_v6 else hostport.split(server, 53)
    if not _is_address(host):
        raise ValueError(f"{server!r}: not an IP address")
    return host, port


def _is_address(host: str) -> bool:
    import socket

    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


_RESOLVERS: dict[tuple[str, ...], dns.resolver.Resolver] = {}
CACHE_ENTRIES = 2000
"""Answers a resolver keeps (least recently used go first)."""
BIG_ANSWER = 4096
"""Bytes (on the wire) past which an answer is not kept: asked again instead."""
MAX_TTL = 3600
"""Seconds an answer is kept at most, whatever TTL it came with."""
HITS = 0
"""Questions answered from the cache (an answer, or a cached NXDOMAIN), since start."""
MISSES = 0
"""Questions the cache had no answer to (not there, or expired): asked of DNS."""
TOO_BIG = 0
"""Answers not kept because they were over BIG_ANSWER (or could not be measured)."""


def forget() -> None:
    """Drop the resolvers and their caches (the resident server's SIGHUP); the counts stay."""
    _RESOLVERS.clear()


def cache_statistics() -> tuple[int, int, int, int]:
    """HITS, MISSES and TOO_BIG (since start), and the answers kept now over every resolver:
    read at a scrape (qqfilter serve --metrics, docs/metrics.md)."""
    kept = sum(len(getattr(r.cache, "data", ())) for r in list(_RESOLVERS.values()))
    return HITS, MISSES, TOO_BIG, kept


def make_resolver(servers: tuple[str, ...]) -> dns.resolver.Resolver:
    """The resolver for ``servers`` (resolv.conf's when empty), made once per process with a
    cache that honours TTLs, so a resident server asks DNS once per TTL.

    Raises OSError when there is no resolv.conf to read.
    """
    resolver = _RESOLVERS.get(servers)
    if resolver is None:
        dnsimport.prepare()
        resolver = _new_resolver(servers)
        resolver.cache = _bounded_cache()
        _RESOLVERS[servers] = resolver
    return resolver


def _bounded_cache() -> dns.resolver.LRUCache:
    """dnspython's LRU cache of CACHE_ENTRIES answers, keeping no answer over BIG_ANSWER
    bytes or past MAX_TTL seconds."""
    import time

    import dns.rcode
    import dns.rdatatype
    import dns.resolver

    class BoundedCache(dns.resolver.LRUCache):
        def get(self, key):
            """dnspython looks twice for a question: its type, then ANY for a cached
            NXDOMAIN; the second look decides a miss. The counts are unlocked: one lost to
            a race is no harm."""
            global HITS, MISSES
            found = super().get(key)
            if key[1] != dns.rdatatype.ANY:
                if found is not None:
                    HITS += 1
            elif found is not None and found.response.rcode() == dns.rcode.NXDOMAIN:
                HITS += 1
            else:
                MISSES += 1
            return found

        def put(self, key, value) -> None:
            global TOO_BIG
            try:
                size = len(value.response.to_wire())
            except Exception:  # an answer that cannot be measured is not kept
                size = BIG_ANSWER + 1
            if size > BIG_ANSWER:
                TOO_BIG += 1  # unlocked, as the counts above
                return
            value.expiration = min(value.expiration, time.time() + MAX_TTL)
            super().put(key, value)

    return BoundedCache(CACHE_ENTRIES)


def _new_resolver(servers: tuple[str, ...]) -> dns.resolver.Resolver:
    import dns.nameserver
    import dns.resolver

    if not servers:
        try:
            return dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise OSError(f"no usable resolv.conf: {exc}") from None
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(*_host_port(s)) for s in servers]
    return resolver


def spf_lookup(resolver):
    """pyspf's ``DNSLookup(name, qtype, strict, timeout)``, answering from ``resolver``.

    A name that cannot exist (too long, an empty label: macros can build one) has no records.
    """
    dnsimport.prepare()
    import dns.exception
    import dns.name
    import dns.resolver
    import spf

    _BAD_NAME = (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel)

    def lookup(name: str, qtype: str, strict: object = True, timeout: float = 20) -> list:
        try:
            answers = resolver.resolve(name, qtype, lifetime=timeout, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN, *_BAD_NAME):
            return []
        except dns.exception.Timeout:
            raise spf.TempError(f"DNS timeout looking up {qtype} {name}") from None
        except dns.resolver.NoNameservers:
            raise spf.TempError(f"DNS servers failed for {qtype} {name}") from None
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS error for {qtype} {name}: {type(exc).__name__}") from None
        found = []
        for rdata in answers:
            if qtype in ("A", "AAAA"):
                found.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                found.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                found.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                found.append(((name, qtype), rdata.strings))
        return found

    return lookup

"""The resolver's cache, as a resident server keeps it for days, against a real nsd.

A sender chooses the names looked up (a new SPF domain per message), the size of the answers
and their TTLs; the cache must stay bounded in entries, in the size of what it keeps and in
how long it keeps it.
"""

import time

from qqfilter.shared import resolver


def _lookups(nsd_server, names):
    resolver.forget()
    dns_resolver = resolver.make_resolver((nsd_server.address,))
    lookup = resolver.spf_lookup(dns_resolver)
    for name in names:
        lookup(name, "TXT", True, 5)
    return dns_resolver.cache


def test_the_cache_keeps_at_most_its_entries(nsd_server, monkeypatch):
    monkeypatch.setattr(resolver, "CACHE_ENTRIES", 200)  # the same code, a shorter test
    count = resolver.CACHE_ENTRIES + 300
    cache = _lookups(nsd_server, (f"n{i}.week.spf.test" for i in range(count)))
    assert len(cache.data) == resolver.CACHE_ENTRIES


def test_no_answer_is_kept_past_the_ttl_cap(nsd_server):
    cache = _lookups(nsd_server, ["a.week.spf.test"])
    (node,) = cache.data.values()
    assert node.value.rrset.ttl == 604800  # the zone's week
    assert node.value.expiration <= time.time() + resolver.MAX_TTL


def test_large_answers_are_asked_again_not_kept(nsd_server):
    cache = _lookups(nsd_server, [f"n{i}.huge.spf.test" for i in range(50)])
    assert not cache.data
    found = resolver.spf_lookup(resolver.make_resolver((nsd_server.address,)))(
        "x.huge.spf.test", "TXT", True, 5
    )
    assert found and found[0][1][0].startswith(b"v=spf1 ")

"""The client's reverse DNS (QQF_RDNS): rhost-check's idea, done right.

- ``off`` (the default): nothing is looked up;
- ``ptr``: the client's address must have a PTR record (in-addr.arpa, ip6.arpa; an
  IPv4-mapped IPv6 address is its IPv4 address);
- ``fcrdns``: forward-confirmed reverse DNS: one of the PTR names must have the client's
  address among its addresses (A for an IPv4 client, AAAA for an IPv6 one).

A client that fails is refused (Reject::SNDR::DNS_Rhost, 5.7.25 "Reverse DNS validation
failed", RFC 7372). A lookup that cannot be done (timeout, SERVFAIL, no server) is "could
not decide" (451), never a refusal; a name or a record that does not exist is an answer.
Under ``fcrdns`` one confirming name is enough, even when the lookup of another failed; a
refusal needs every name tried to have answered.

TCPREMOTEHOST (tcpserver -h's PTR lookup, or whatever a tcp rules line set) is a hint, never
a fact: a name is believed only when the PTR lookup returns it and its own addresses hold
the client's. Among the PTR names it is tried first, which spares the lookups of the others.
At most MAX_NAMES names are looked up: a PTR set is the sender's to make as large as it likes.

RELAYCLIENT, local injection and a client on a QQF_DNSWL list are not judged (the family's
``judged``).
"""

from __future__ import annotations

from qqfilter.checks import Finding
from qqfilter.checks.hygiene import DNS_LATER, SHARED, Lookups, Undecided, judged, lookups_for
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, choice

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address

    Address = IPv4Address | IPv6Address

NAME = "rdns"
ORDER = 26

RDNS = Setting(
    "rdns",
    "QQF_RDNS",
    "off",
    choice("off", "ptr", "fcrdns"),
    "the client's reverse DNS: off; ptr = its address must have a PTR record; fcrdns = a "
    "PTR name must resolve back to the address (forward-confirmed)",
)
SETTINGS = (RDNS, *SHARED)
PRELOAD = (
    "ipaddress",
    "dns.exception",
    "dns.name",
    "dns.resolver",
    "qqfilter.shared.resolver",
    "qqfilter.shared.received",
)

TAG = "Reject::SNDR::DNS_Rhost"
STATUS = "5.7.25"
"""RFC 7372's "Reverse DNS validation failed"."""
MAX_NAMES = 10
"""PTR names whose addresses fcrdns looks up at most."""
SHOWN = 3
"""PTR names (and addresses of one name) a reason or a log detail spells out."""


def check(message: Message, settings: Settings) -> Finding | None:
    """Look the client's address up (``ptr``), and its PTR names back (``fcrdns``)."""
    mode = settings[RDNS]
    if mode == "off":
        return None
    found = judged(NAME, message, settings)
    if isinstance(found, Finding):
        return found
    address = _address(found.ip)
    if address is None:
        return Finding(
            NAME,
            Finding.UNKNOWN,
            "cannot check the client's reverse DNS",
            status=DNS_LATER,
            detail=f"TCPREMOTEIP {found.ip!r} is not an IP address",
        )
    ip = str(address)
    try:
        lookups = lookups_for(settings)
        names = _ptr_names(lookups, address)
    except Undecided as exc:
        return _undecided(ip, str(exc))
    if not names:
        return Finding(
            NAME,
            Finding.REFUSE,
            f"no reverse DNS for {ip}",
            tag=TAG,
            status=STATUS,
            detail=f"no PTR record for {address.reverse_pointer}",
        )
    if mode == "ptr":
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        return Finding(NAME, Finding.CLEAN, names[0] + more)
    return _confirm(lookups, address, names, found.host)


def _address(ip: str) -> Address | None:
    """``ip`` as an address (an IPv4-mapped one as IPv4, a zone index dropped); None when it
    is not one."""
    import ipaddress

    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _ptr_names(lookups: Lookups, address: Address) -> list[str]:
    """The PTR names of ``address``, lower case, each once, in the order DNS gave them
    (a PTR to the root is no name). Raises Undecided."""
    names = (name.lower().rstrip(".") for name in lookups.ask(address.reverse_pointer, "PTR"))
    return list(dict.fromkeys(name for name in names if name and name != "@"))


def _confirm(lookups: Lookups, address: Address, names: list[str], host: str | None) -> Finding:
    """Forward-confirm ``names``: the first whose addresses hold ``address`` is the client's
    name. TCPREMOTEHOST (``host``) goes first when it is one of them, and counts for
    nothing when it is not."""
    ip = str(address)
    qtype = "A" if address.version == 4 else "AAAA"
    hint = host.lower().rstrip(".") if host else ""
    if hint and hint in names:
        others = [name for name in names if name != hint]
        order = [hint, *others[: MAX_NAMES - 1]]
    else:
        order = names[:MAX_NAMES]
    tried: list[str] = []  # "name (its addresses)", for the log
    failures: list[str] = []
    for name in order:
        try:
            answers = lookups.ask(name, qtype)
        except Undecided as exc:
            failures.append(str(exc))
            tried.append(f"{name} (no answer)")
            continue
        if any(_same(answer, address) for answer in answers):
            return Finding(NAME, Finding.CLEAN, _confirmed(name, hint, order))
        tried.append(f"{name} ({_listed(answers) if answers else f'no {qtype}'})")
    detail = f"{qtype} of {'; '.join(tried)}"
    if len(names) > len(order):
        detail += f"; {len(names) - len(order)} more PTR names not tried"
    if hint and hint not in names:
        detail += f"; TCPREMOTEHOST {hint} is not a PTR name of {ip}"
    if failures:
        return _undecided(ip, f"{'; '.join(failures)}; {detail}")
    return Finding(
        NAME,
        Finding.REFUSE,
        f"reverse DNS of {ip} ({_listed(order)}) does not resolve back to it",
        tag=TAG,
        status=STATUS,
        detail=detail,
    )


def _confirmed(name: str, hint: str, order: list[str]) -> str:
    """The note for a confirmed ``name``: whether it was TCPREMOTEHOST, or which names were
    looked up in vain before it."""
    if name == hint:
        return f"{name} (TCPREMOTEHOST)"
    before = order[: order.index(name)]
    return f"{name} (after {_listed(before)})" if before else name


def _same(answer: str, address: Address) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(answer) == address
    except ValueError:
        return False


def _listed(items: list[str]) -> str:
    """The first SHOWN of ``items``, comma-separated, and how many more there are."""
    shown = ", ".join(items[:SHOWN])
    return f"{shown} and {len(items) - SHOWN} more" if len(items) > SHOWN else shown


def _undecided(ip: str, detail: str) -> Finding:
    return Finding(
        NAME,
        Finding.UNKNOWN,
        f"DNS temporary failure checking the reverse DNS of {ip}",
        status=DNS_LATER,
        detail=detail,
    )

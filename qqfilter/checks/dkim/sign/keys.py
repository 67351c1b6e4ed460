"""Signing keys in qmail-dkim's layout, and the DNS record that publishes each.

    control/domainkeys/<domain>/selector     the selectors to sign with, one a line
                                             (no file: ``default``)
    control/domainkeys/<domain>/<selector>   each one's private key
    control/domainkeys/%/...                 the same for any domain of ours (rcpthosts,
                                             morercpthosts.cdb) without a directory of its own

A selector whose key file is not there is left out. Two selectors, one with an RSA key and
one with an Ed25519 key, sign each message twice (RFC 8463 recommends it while receivers
learn Ed25519). A key is read the way qmail's control files are read (control.read_trusted:
it must belong to root or to the user the checks run as, writable by nobody else; one that
cannot be read is a configuration error, 451, not unsigned mail), in any of the forms the
usual tools write: PEM PKCS#1 (``openssl genrsa``, qmail-dkim's dknewkey), PEM PKCS#8
(``openssl genpkey``, RSA or Ed25519), or dkimpy's base64 Ed25519 seed.

The `cryptography` package reads PKCS#8 and makes keys (``qqfilter dkim keygen``); it is
imported only for those.
"""

from __future__ import annotations

import base64
import os
import re

from qqfilter import control
from qqfilter.exitcodes import CONFIG_ERROR, QueueError

DIRECTORY = "domainkeys"
"""Under qmail's control/."""
DEFAULT = "%"
"""The directory of the key for every domain of ours without its own."""
SELECTORS = "selector"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SEED = re.compile(rb"\s*[A-Za-z0-9+/]{43}=\s*")
RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"


class Key:
    """One key to sign with: ``selector``, ``algorithm`` (rsa-sha256 or ed25519-sha256) and
    ``private`` in the form dkimpy wants (PEM PKCS#1 for RSA, the base64 seed for Ed25519).
    A hand-written ``__slots__`` record."""

    __slots__ = ("algorithm", "private", "selector")

    def __init__(self, selector: str, algorithm: str, private: bytes) -> None:
        self.selector = selector
        self.algorithm = algorithm
        self.private = private


def directory(qmailhome: str, domain: str) -> str:
    """The directory of ``domain``'s keys."""
    return os.path.join(qmailhome, "control", DIRECTORY, domain)


def keys_for(qmailhome: str, domain: str) -> list[Key]:
    """The keys to sign mail from ``domain`` with: its own, else those of ``%`` when the
    domain is ours; [] when there are none. Raises QueueError 55 for a key that exists and
    cannot be read or used."""
    from qqfilter.checks.dkim import valid_domain

    if not valid_domain(domain):
        return []
    found = _keys_in(directory(qmailhome, domain))
    if found:
        return found
    from qqfilter.checks.hygiene import ours

    if ours(qmailhome, domain):
        return _keys_in(directory(qmailhome, DEFAULT))
    return []


def selectors(where: str) -> list[str]:
    """The selectors named in ``where``/selector (``default`` when there is no such file)."""
    data = control.read_trusted(os.path.join(where, SELECTORS), _shown(where, SELECTORS))
    if data is None:
        return ["default"]
    names = data.decode("utf-8", "replace").split()
    return [name for name in names if _NAME.fullmatch(name)]


def _keys_in(where: str) -> list[Key]:
    if not os.path.isdir(where):
        return []
    found = []
    for selector in selectors(where):
        path = os.path.join(where, selector)
        data = control.read_trusted(path, _shown(where, selector), 1 << 16)
        if data is not None:
            found.append(Key(selector, *readable(data, path)))
    return found


def _shown(where: str, name: str) -> str:
    """The file as the log names it: ``control/domainkeys/example.org/default``."""
    return f"control/{DIRECTORY}/{os.path.basename(where)}/{name}"


def readable(data: bytes, path: str) -> tuple[str, bytes]:
    """(algorithm, the key as dkimpy wants it) of the key file ``data``."""
    if b"-----BEGIN RSA PRIVATE KEY-----" in data:
        return RSA, data
    if _SEED.fullmatch(data):
        return ED25519, data.strip()
    if b"-----BEGIN PRIVATE KEY-----" in data:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            key = None
        if isinstance(key, rsa.RSAPrivateKey):
            return RSA, key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        if isinstance(key, ed25519.Ed25519PrivateKey):
            raw = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            return ED25519, base64.b64encode(raw)
    raise QueueError(CONFIG_ERROR, f"DKIM key {path}: not an RSA or Ed25519 private key")


def public_record(algorithm: str, private: bytes) -> str:
    """The TXT record that publishes the public half of ``private`` (as dkimpy wants it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if algorithm == ED25519:
        seed = base64.b64decode(private)
        public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    key = serialization.load_pem_private_key(private, password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def generate(algorithm: str, bits: int = 2048) -> bytes:
    """A new private key file's contents: PEM PKCS#1 for RSA (what qmail-dkim writes), PEM
    PKCS#8 for Ed25519 (what ``openssl genpkey`` writes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == ED25519:
        return ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def valid_name(name: str) -> bool:
    """Whether ``name`` may be a selector (or a label of a domain): no path, no dot first."""
    return bool(_NAME.fullmatch(name))

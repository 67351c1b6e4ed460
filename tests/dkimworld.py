"""The DKIM/DMARC tests' world: keys made for this run, published by a real nsd.

Keys (made once per run with `cryptography`): RSA 2048 ``rsa``, RSA 1024 ``small``, RSA 512
``weak``, Ed25519 ``ed``, and ``revoked`` (published with an empty p=); ``gone`` is never
published. The zones (dkim.test and other.test: two organizational domains, since the public
suffix list knows no ``test`` and takes the last label for the suffix):

- every selector at ``<s>._domainkey.dkim.test``; ``rsa`` also under reject.dkim.test,
  strict.dkim.test, signed.dkim.test and other.test;
- DMARC: ``_dmarc.dkim.test`` p=reject sp=quarantine (the organizational policy for
  sub.dkim.test); none/quarantine/reject/strict (adkim=s aspf=s)/sampled (pct=0)/twice (two
  records) under dkim.test;
- SPF: every domain above allows the client 192.0.2.1 (so a bounce address there passes),
  nothing else does.
"""

from __future__ import annotations

import base64

from nameserver import Nsd

CLIENT = "192.0.2.1"
RECEIVER = "mx.example.org"
SELECTORS = ("rsa", "small", "weak", "ed", "revoked")


class Key:
    """A key as dkimpy signs with it (``private``), as a key file holds it (``pem``), and
    its TXT record."""

    def __init__(self, algorithm: str, private: bytes, pem: bytes, record: str) -> None:
        self.algorithm = algorithm
        self.private = private
        self.pem = pem
        self.record = record


def make_key(kind: str, bits: int = 2048) -> Key:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
        return Key("ed25519-sha256", base64.b64encode(raw), pem, record)
    if bits < 1024:  # cryptography makes none this small: openssl still does
        import subprocess

        made = subprocess.run(["openssl", "genrsa", str(bits)], capture_output=True, check=True)
        key = serialization.load_pem_private_key(made.stdout, password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key("rsa-sha256", pem, pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")


def txt(record: str) -> str:
    """``record`` as a TXT RDATA of strings of at most 255 characters."""
    return " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))


SPF = txt("v=spf1 ip4:192.0.2.0/24 -all")
DMARC = {
    "": "v=DMARC1; p=reject; sp=quarantine",
    "none": "v=DMARC1; p=none",
    "quarantine": "v=DMARC1; p=quarantine",
    "reject": "v=DMARC1; p=reject; rua=mailto:dmarc@dkim.test",
    "strict": "v=DMARC1; p=reject; adkim=s; aspf=s",
    "sampled": "v=DMARC1; p=reject; pct=0",
}
SPF_NAMES = ("@", "none", "quarantine", "reject", "strict", "sampled", "twice", "sub", "signed")


class World:
    """The keys and the nsd that publishes them (``address`` for QQF_DNS)."""

    def __init__(self, also: tuple[str, ...] = ()) -> None:
        self.keys = {
            "rsa": make_key("rsa"),
            "small": make_key("rsa", 1024),
            "weak": make_key("rsa", 512),
            "ed": make_key("ed25519"),
            "revoked": make_key("rsa"),
            "gone": make_key("rsa"),
            "signer": make_key("rsa"),  # qqfilter's own signing key (signed.dkim.test)
            "signer-ed": make_key("ed25519"),
        }
        self.nsd = Nsd(
            extra={"dkim.test": self._dkim_zone(), "other.test": self._other_zone()}, also=also
        )

    @property
    def address(self) -> str:
        return self.nsd.address

    def stop(self) -> None:
        self.nsd.stop()

    def _head(self, origin: str) -> list[str]:
        return [
            f"$ORIGIN {origin}.",
            "$TTL 300",
            f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300",
            f"@ IN NS ns.{origin}.",
            "ns IN A 127.0.0.1",
        ]

    def _dkim_zone(self) -> str:
        lines = self._head("dkim.test")
        for selector in ("rsa", "small", "weak", "ed"):
            lines.append(f"{selector}._domainkey IN TXT {txt(self.keys[selector].record)}")
        lines.append(f"revoked._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=')}")
        for sub in ("reject", "strict"):
            lines.append(f"rsa._domainkey.{sub} IN TXT {txt(self.keys['rsa'].record)}")
        lines.append(f"default._domainkey.signed IN TXT {txt(self.keys['signer'].record)}")
        lines.append(f"ed._domainkey.signed IN TXT {txt(self.keys['signer-ed'].record)}")
        for name, record in DMARC.items():
            where = f"_dmarc.{name}" if name else "_dmarc"
            lines.append(f"{where} IN TXT {txt(record)}")
        lines.append(f"_dmarc.twice IN TXT {txt('v=DMARC1; p=reject')}")
        lines.append(f"_dmarc.twice IN TXT {txt('v=DMARC1; p=none')}")
        lines += [f"{name} IN TXT {SPF}" for name in SPF_NAMES]
        lines.append(f"bounce.strict IN TXT {SPF}")
        return "\n".join(lines) + "\n"

    def _other_zone(self) -> str:
        lines = self._head("other.test")
        lines.append(f"rsa._domainkey IN TXT {txt(self.keys['rsa'].record)}")
        lines.append(f"@ IN TXT {SPF}")
        return "\n".join(lines) + "\n"

    def sign(self, message: bytes, domain: str, selector: str, **options) -> bytes:
        """``message`` with a DKIM-Signature by ``selector``'s key for ``domain`` on top."""
        import dkim

        key = self.keys[selector]
        options.setdefault("signature_algorithm", key.algorithm.encode())
        signature = dkim.sign(
            message, selector.encode(), domain.encode(), key.private, linesep=b"\n", **options
        )
        return signature + message

"""A member's keys, its SPEC §3 fingerprint, and the field checks join requests and credentials share."""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from alliance import signing
from alliance._internal.hexgroups import format_hex_groups, parse_hex_groups
from alliance.errors import CryptoError, InvalidInput
from alliance.v1 import alliance_pb2 as pb
from alliance.pki.base import _is_dns_name, FINGERPRINT_PREFIX, MAX_NAME_CHARS, PAILLIER_MAX_BITS, PAILLIER_MIN_BITS, PathLike, _lp, ed25519_public_raw, load_ec_private_pem, load_ed25519_private_pem, load_x25519_private_pem, spki_der, write_private_pem, x25519_public_raw
from alliance.pki.certificates import is_reserved_host, new_tls_key

# ---------------------------------------------------------------------------
# Member keys and fingerprints


@dataclass
class MemberKeys:
    """A member's private keys. Paillier is handled by the caller."""

    tls_key: ec.EllipticCurvePrivateKey
    ed25519_key: Ed25519PrivateKey
    x25519_key: X25519PrivateKey

    FILES = {"tls_key": "tls.key", "ed25519_key": "ed25519.key", "x25519_key": "x25519.key"}

    def save(self, directory: PathLike, *, overwrite: bool = False) -> None:
        """Three PKCS#8 PEM files, mode 0600, in ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for attr, name in self.FILES.items():
            write_private_pem(d / name, getattr(self, attr), overwrite=overwrite)

    @classmethod
    def load(cls, directory: PathLike) -> "MemberKeys":
        d = Path(directory)
        return cls(
            tls_key=load_ec_private_pem(d / cls.FILES["tls_key"]),
            ed25519_key=load_ed25519_private_pem(d / cls.FILES["ed25519_key"]),
            x25519_key=load_x25519_private_pem(d / cls.FILES["x25519_key"]),
        )


def generate_member_keys() -> MemberKeys:
    return MemberKeys(tls_key=new_tls_key(), ed25519_key=Ed25519PrivateKey.generate(), x25519_key=X25519PrivateKey.generate())


def member_fingerprint(tls_spki_der: bytes, ed25519_raw: bytes, x25519_raw: bytes, paillier_n: bytes) -> bytes:
    """SPEC §3 fingerprint: SHA-256(b"alliance/v1/member-keys\\x00" ‖ each key
    4-byte-length-prefixed, in this order). Uses the TLS *public key*, so it
    exists before the certificate and survives certificate renewal."""
    return hashlib.sha256(FINGERPRINT_PREFIX + _lp(tls_spki_der, ed25519_raw, x25519_raw, paillier_n)).digest()


def format_fingerprint(fp: bytes) -> str:
    """All 32 bytes as 16 groups of 4 hex digits, e.g. ``3f2a:91c0:...``:
    readable over the phone, nothing truncated."""
    return format_hex_groups(fp)


def parse_fingerprint(text: str) -> bytes:
    """Inverse of :func:`format_fingerprint`, tolerant of spaces/colons/dashes/case."""
    return parse_hex_groups(text, 32, "fingerprint")


def keys_fingerprint(keys: MemberKeys, paillier_n: bytes) -> bytes:
    return member_fingerprint(spki_der(keys.tls_key), ed25519_public_raw(keys.ed25519_key), x25519_public_raw(keys.x25519_key), paillier_n)


# ---------------------------------------------------------------------------
# Field validation shared by join requests and credentials




def check_endpoint(endpoint: str, who: str) -> str:
    """host:port with host a DNS name, IPv4 address or [IPv6] address."""
    host, sep, port = endpoint.rpartition(":")
    ok = bool(sep) and port.isdigit() and 1 <= int(port) <= 65535 and not port.startswith("0")
    if ok:
        if host.startswith("[") and host.endswith("]"):
            try:
                ok = isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address)
            except ValueError:
                ok = False
        else:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                ok = _is_dns_name(host)
    if not ok:
        raise InvalidInput(f"{who}: endpoint must be host:port, got {endpoint!r}")
    if is_reserved_host(host):
        raise InvalidInput(f"{who}: endpoint host {host!r} is reserved for the alliance gateway")
    return endpoint


def check_ed25519_public(raw: bytes, who: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise CryptoError(f"{who}: malformed Ed25519 public key ({len(raw)} bytes)") from None
    if not signing.ed25519_key_acceptable(raw):
        raise CryptoError(f"{who}: Ed25519 public key is a point of small order or not canonically encoded; "
                          "no signature under it can be trusted (make a new key with `alliance member keygen`)")


def check_x25519_public(raw: bytes, who: str) -> None:
    """Also refuses low-order points, which would make every shared secret zero."""
    try:
        pub = X25519PublicKey.from_public_bytes(raw)
        X25519PrivateKey.generate().exchange(pub)
    except ValueError:
        raise CryptoError(f"{who}: malformed or low-order X25519 public key") from None


def check_paillier_n(n_bytes: bytes, who: str) -> None:
    """Canonical big-endian, odd, at least 2048 bits (SPEC §4)."""
    if not n_bytes or n_bytes[0] == 0:
        raise CryptoError(f"{who}: Paillier modulus must be non-empty big-endian without leading zeros")
    n = int.from_bytes(n_bytes, "big")
    if n % 2 == 0:
        raise CryptoError(f"{who}: Paillier modulus must be odd")
    if not PAILLIER_MIN_BITS <= n.bit_length() <= PAILLIER_MAX_BITS:
        raise CryptoError(f"{who}: Paillier modulus has {n.bit_length()} bits; at least {PAILLIER_MIN_BITS} required")


def check_name(name: str, who: str) -> None:
    if not name.strip() or len(name) > MAX_NAME_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidInput(f"{who}: name must be 1-{MAX_NAME_CHARS} printable characters")


def _check_member_keys(role: int, ed25519: bytes, x25519: bytes, paillier_n: bytes, endpoint: str, who: str) -> None:
    check_ed25519_public(ed25519, who)
    check_x25519_public(x25519, who)
    if role == pb.ROLE_MEMBER:
        check_paillier_n(paillier_n, who)
        check_endpoint(endpoint, who)
    else:
        if paillier_n:
            check_paillier_n(paillier_n, who)
        if endpoint:
            check_endpoint(endpoint, who)

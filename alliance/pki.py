"""Alliance PKI (SPEC §3, §5): the alliance CA, TLS certificates, member keys,
join requests, CA-signed credentials and trust-on-first-use pinning.

Trust model in one paragraph. The operator runs the CA and is
honest-but-curious, so a CA signature alone proves only "the operator admitted
this". What stops the operator from impersonating a member is, in order:

1. keys are generated on the member's side; a join request is self-signed with
   the new Ed25519 key (proof of possession);
2. each member's fingerprint (SHA-256 over all its public keys) is confirmed
   out of band by the peers that matter (matching-key hand-over, SPEC §3);
3. peers *pin* a member's keys the first time they see its credential; a
   credential with different keys for a known member id is accepted only with
   a rotation signature by the pinned Ed25519 key (:func:`check_pin`).

Pins compare the actual keys (Ed25519, X25519, Paillier n) and not only the
CA-asserted ``member_fingerprint``: the credential carries the SHA-256 of the
TLS *certificate*, not the TLS public key, so a peer cannot recompute the
fingerprint from the credential alone (see :func:`check_credential_fingerprint`
for the case where the TLS certificate is at hand).

Private key files are PKCS#8 PEM, created atomically with mode 0600 and
refused on load when readable by group or others (as ssh does).
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import stat
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alliance import signing
from alliance._internal.hexgroups import format_hex_groups, parse_hex_groups
from alliance.errors import CryptoError, InvalidInput, Refused
from alliance.v1 import alliance_pb2 as pb

PathLike = Union[str, os.PathLike]
PrivateKey = Union[ec.EllipticCurvePrivateKey, Ed25519PrivateKey, X25519PrivateKey]

MEMBER_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{1,31}")
FINGERPRINT_PREFIX = b"alliance/v1/member-keys\x00"
ROLE_URI_PREFIX = "urn:alliance:role:"
MEMBER_URI_PREFIX = "urn:alliance:member:"
TLS_ROLES = ("member", "auditor", "gateway")
CREDENTIAL_ROLES = ("member", "auditor")
PAILLIER_MIN_BITS = 2048
PAILLIER_MAX_BITS = 16384  # bound the work a hostile join request can cause
MAX_NAME_CHARS = 200

# SPEC §5.2: the gateway role, checked by the TLS handshake itself. Python gRPC
# clients cannot read the server's certificate, so every client of the gateway
# verifies the server against this reserved DNS name
# (``grpc.ssl_target_name_override``) instead of the host it dialled. The CA
# puts it in gateway certificates only and refuses it (and anything under
# RESERVED_DOMAIN) in every other certificate and in join-request endpoints, so
# a member or auditor certificate from the same CA fails the handshake. ``.invalid``
# (RFC 6761) never resolves, so no real host can be confused with it.
RESERVED_DOMAIN = "alliance.invalid"
GATEWAY_TLS_NAME = "gateway." + RESERVED_DOMAIN
# Loopback names go into member and auditor certificates only in a local/demo
# alliance (SPEC §5.2).
LOOPBACK_NAMES = ("localhost", "127.0.0.1")
CA_PASSPHRASE_ENV = "ALLIANCE_CA_PASSPHRASE"

_ROLE_TO_PB = {"member": pb.ROLE_MEMBER, "auditor": pb.ROLE_AUDITOR, "gateway": pb.ROLE_GATEWAY}
_PB_TO_ROLE = {v: k for k, v in _ROLE_TO_PB.items()}


# ---------------------------------------------------------------------------
# Small helpers


def _lp(*parts: bytes) -> bytes:
    """4-byte big-endian length prefix per part: unambiguous concatenation."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _now() -> int:
    return int(time.time())


def _utc(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_member_id(member_id: str) -> str:
    """Member ids appear in URIs, file names and log entries: keep them boring."""
    if not isinstance(member_id, str) or not MEMBER_ID_RE.fullmatch(member_id):
        raise InvalidInput(
            f"invalid member id {member_id!r}: use 2-32 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return member_id


def role_to_pb(role: str) -> int:
    try:
        return _ROLE_TO_PB[role]
    except KeyError:
        raise InvalidInput(f"unknown role {role!r}: expected one of {', '.join(TLS_ROLES)}") from None


def role_name(role: int) -> str:
    try:
        return _PB_TO_ROLE[role]
    except KeyError:
        raise InvalidInput(f"unknown role value {role}") from None


# ---------------------------------------------------------------------------
# Files: atomic, private by default


def write_file_atomic(path: PathLike, data: bytes, *, mode: int = 0o600, overwrite: bool = False) -> None:
    """Write ``data`` so that ``path`` is either absent/old or complete, never
    half-written, and never exists with looser permissions than ``mode``.
    Refuses to replace an existing file unless ``overwrite`` — losing a private
    key to a typo is unrecoverable."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)  # mkstemp already gives 0600; this sets the final mode before any data lands
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                raise InvalidInput(f"{path} already exists; refusing to overwrite it") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if path.exists():  # filesystem without hard links: best effort
                    raise InvalidInput(f"{path} already exists; refusing to overwrite it") from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
        try:
            dfd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_private_file(path: PathLike) -> bytes:
    """Read a secret file, refusing one that group or others can read: a key
    that has been exposed must not be used silently."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    if os.name == "posix" and stat.S_IMODE(st.st_mode) & 0o077:
        raise Refused(
            f"{path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}",
            reason="insecure_key_file",
        )
    return path.read_bytes()


def read_passphrase_file(path: PathLike) -> bytes:
    """A passphrase file: its bytes less one trailing newline. A regular file
    readable by group or others is refused like a key (the passphrase would be
    as exposed as an unencrypted key); pipes (``--passphrase-file /dev/stdin``)
    are read as they are."""
    path = Path(path)
    try:
        regular = stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        raise InvalidInput(f"passphrase file {path}: no such file") from None
    data = read_private_file(path) if regular else path.read_bytes()
    data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    if not data:
        raise InvalidInput(f"passphrase file {path} is empty")
    return data


def resolve_ca_passphrase(passphrase_file: PathLike | None, environ: dict[str, str] | None = None) -> bytes | None:
    """SPEC §5.4: ``--passphrase-file`` wins over ``ALLIANCE_CA_PASSPHRASE``;
    neither gives None (an unencrypted CA key)."""
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    value = (os.environ if environ is None else environ).get(CA_PASSPHRASE_ENV)
    if value is None:
        return None
    if not value:
        raise InvalidInput(f"{CA_PASSPHRASE_ENV} is set but empty")
    return value.encode("utf-8")


def is_encrypted_pem(data: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data


def load_ca_key(path: PathLike, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    """The alliance CA key, decrypted with ``passphrase`` when it is encrypted
    at rest. A missing or wrong passphrase is refused (exit 4): the operator is
    not authorised to use the key, the file itself is fine."""
    data = read_private_file(path)
    hint = f"give it with --passphrase-file FILE or the {CA_PASSPHRASE_ENV} environment variable"
    if is_encrypted_pem(data):
        if passphrase is None:
            raise Refused(f"{path} is encrypted and no passphrase was given; {hint}", reason="ca_passphrase_required")
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except ValueError:
            raise Refused(f"wrong passphrase for the CA key {path}", reason="ca_passphrase_wrong") from None
    else:
        # A passphrase for an unencrypted key is harmless (e.g. one set in the
        # environment for another alliance); the key is used as it is.
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{path}: not a readable PKCS#8 private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidInput(f"{path}: expected an ECDSA P-256 CA key")
    return key


def private_pem(key: PrivateKey, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when a password is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def tls_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM, the form ``grpc.ssl_*_credentials`` wants."""
    return private_pem(key)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private_pem(path: PathLike, key: PrivateKey, *, password: bytes | None = None, overwrite: bool = False) -> None:
    """Any private key (ECDSA, Ed25519, X25519) as PKCS#8 PEM, mode 0600."""
    write_file_atomic(path, private_pem(key, password), mode=0o600, overwrite=overwrite)


def load_private_pem(path: PathLike, *, password: bytes | None = None) -> PrivateKey:
    data = read_private_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path}: not a readable PKCS#8 private key ({exc})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, Ed25519PrivateKey, X25519PrivateKey)):
        raise InvalidInput(f"{path}: unsupported key type {type(key).__name__}")
    return key


def load_ec_private_pem(path: PathLike, *, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    key = load_private_pem(path, password=password)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidInput(f"{path}: expected an ECDSA P-256 private key")
    return key


def load_ed25519_private_pem(path: PathLike, *, password: bytes | None = None) -> Ed25519PrivateKey:
    key = load_private_pem(path, password=password)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path}: expected an Ed25519 private key")
    return key


def load_x25519_private_pem(path: PathLike, *, password: bytes | None = None) -> X25519PrivateKey:
    key = load_private_pem(path, password=password)
    if not isinstance(key, X25519PrivateKey):
        raise InvalidInput(f"{path}: expected an X25519 private key")
    return key


def write_cert_pem(path: PathLike, cert: x509.Certificate, *, overwrite: bool = True) -> None:
    """Certificates are public (0644) and replaced on renewal, hence overwrite=True."""
    write_file_atomic(path, cert_pem(cert), mode=0o644, overwrite=overwrite)


def load_cert_pem(path: PathLike) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except ValueError as exc:
        raise InvalidInput(f"{path}: not a PEM certificate ({exc})") from None


def ed25519_public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_public_raw(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def spki_der(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------------------
# CA and TLS certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_ca(name: str, *, validity_days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Self-signed ECDSA P-256 alliance root. path_length=0: it signs leaf TLS
    certificates only, never another CA."""
    if not name or len(name) > 64:
        raise InvalidInput("CA name must be 1-64 characters")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _dt.datetime.now(_dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256: grpcio refuses Ed25519 TLS certificates (SPEC §5)."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(tls_key: ec.EllipticCurvePrivateKey, member_id: str) -> bytes:
    """PKCS#10 (DER) with CN = member id; the CA issues the certificate, the
    member keeps the key."""
    check_member_id(member_id)
    csr = x509.CertificateSigningRequestBuilder().subject_name(_name(member_id)).sign(tls_key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def _load_csr(csr_der: bytes, member_id: str) -> x509.CertificateSigningRequest:
    """A CSR proves possession of the TLS key and must be P-256 for our id."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise InvalidInput(f"join request for {member_id}: TLS CSR is not valid DER ({exc})") from None
    if not csr.is_signature_valid:
        raise CryptoError(f"join request for {member_id}: TLS CSR signature does not verify")
    pub = csr.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
        raise InvalidInput(f"join request for {member_id}: TLS key must be ECDSA P-256")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != member_id:
        raise InvalidInput(f"join request for {member_id}: TLS CSR common name must be {member_id!r}")
    return csr


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not _is_dns_name(host):
        raise InvalidInput(f"invalid host name for a TLS certificate: {host!r}")
    return x509.DNSName(host)


def is_reserved_host(host: str) -> bool:
    h = host.strip("[]").rstrip(".").lower()
    return h == RESERVED_DOMAIN or h.endswith("." + RESERVED_DOMAIN)


def is_loopback_host(host: str) -> bool:
    h = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return h == "localhost" or h.endswith(".localhost")


def issue_tls_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    *,
    member_id: str,
    role: str,
    hosts: Sequence[str] = (),
    not_before: _dt.datetime,
    not_after: _dt.datetime,
    serial: int | None = None,
    local: bool = False,
) -> x509.Certificate:
    """Leaf certificate for mutual TLS. Identity and role live in URI SANs
    (``urn:alliance:member:<id>``, ``urn:alliance:role:<role>``) so the gateway
    authorises on what the CA asserted, never on a client-supplied field.

    SPEC §5.2: a gateway certificate always carries :data:`GATEWAY_TLS_NAME`,
    which clients check in the handshake; no other role may carry any name
    under :data:`RESERVED_DOMAIN`. Member and auditor certificates carry
    loopback names (localhost, 127.0.0.0/8, ::1) only when ``local`` (a
    local/demo alliance)."""
    check_member_id(member_id)
    role_to_pb(role)
    for h in hosts:
        if is_reserved_host(h) and role != "gateway":
            raise InvalidInput(f"{h!r} is reserved for the alliance gateway's certificate; a {role} certificate may not carry it")
        if is_loopback_host(h) and role != "gateway" and not local:
            raise InvalidInput(
                f"{h!r} is a loopback name; a {role} certificate carries one only in a local/demo alliance"
            )
    if role == "gateway":
        hosts = (GATEWAY_TLS_NAME, *hosts)
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise InvalidInput("TLS certificates use ECDSA P-256 keys (grpcio refuses Ed25519)")
    if not_after <= not_before:
        raise InvalidInput("TLS certificate not_after must be after not_before")
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(MEMBER_URI_PREFIX + member_id),
        x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role),
    ]
    sans += [_host_san(h) for h in dict.fromkeys(hosts)]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(member_id))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256())


def as_certificate(cert: x509.Certificate | bytes) -> x509.Certificate:
    """A certificate from PEM or DER bytes (parse once, then pass the object)."""
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise Refused(f"peer certificate could not be parsed ({exc})", reason="bad_certificate") from None


def peer_identity(cert_der_or_pem: bytes | x509.Certificate) -> tuple[str, str]:
    """(member_id, role) from the peer's TLS certificate SANs. Call only on a
    certificate that TLS already verified against the alliance CA (e.g. gRPC's
    ``auth_context()["x509_pem_cert"][0]``)."""
    cert = as_certificate(cert_der_or_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Refused("peer certificate has no alliance identity (no subjectAltName)", reason="no_identity") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    members = [u[len(MEMBER_URI_PREFIX):] for u in uris if u.startswith(MEMBER_URI_PREFIX)]
    roles = [u[len(ROLE_URI_PREFIX):] for u in uris if u.startswith(ROLE_URI_PREFIX)]
    if len(members) != 1 or len(roles) != 1:
        raise Refused("peer certificate must name exactly one alliance member and one role", reason="no_identity")
    member_id, role = members[0], roles[0]
    if not MEMBER_ID_RE.fullmatch(member_id) or role not in TLS_ROLES:
        raise Refused(f"peer certificate names an invalid identity ({member_id!r}, {role!r})", reason="no_identity")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns and cns[0].value != member_id:
        raise Refused("peer certificate common name and member SAN disagree", reason="no_identity")
    if role != "gateway" and any(is_reserved_host(d) for d in san.get_values_for_type(x509.DNSName)):
        raise Refused(f"peer certificate of {role} {member_id!r} carries the gateway's reserved name", reason="no_identity")
    return member_id, role


def cert_sha256(cert: x509.Certificate | bytes) -> bytes:
    """SHA-256 of the DER certificate (what a credential binds)."""
    c = as_certificate(cert)
    return hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).digest()


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


def _is_dns_name(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", lab) for lab in labels)


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


# ---------------------------------------------------------------------------
# Key rotation


def rotation_message(member_id: str, new_fingerprint: bytes, ed25519_public_key: bytes, x25519_public_key: bytes, paillier_n: bytes) -> bytes:
    """Exact bytes the *previous* Ed25519 key signs (prefix KEY_ROTATION) to
    endorse new keys: length-prefixed member id, new fingerprint and the new
    Ed25519, X25519 and Paillier keys. The keys are named explicitly, not only
    through the fingerprint, because a peer cannot recompute the fingerprint
    from a credential (it lacks the TLS public key): a CA that reused the
    signature with other keys would otherwise go unnoticed. The same signature
    travels in JoinRequest.predecessor_signature and Credential.predecessor_signature."""
    return _lp(b"rotation-v1", member_id.encode("utf-8"), new_fingerprint, ed25519_public_key, x25519_public_key, paillier_n)


def _rotation_message_for(member_id: str, fp: bytes, body: pb.JoinRequestBody | pb.CredentialBody) -> bytes:
    return rotation_message(member_id, fp, body.ed25519_public_key, body.x25519_public_key, body.paillier_n)


# ---------------------------------------------------------------------------
# Join requests


def make_join_request(
    *,
    member_id: str,
    name: str,
    role: str,
    endpoint: str,
    keys: MemberKeys,
    paillier_n: bytes,
    previous_ed25519_key: Ed25519PrivateKey | None = None,
    created_at: int | None = None,
) -> pb.JoinRequest:
    """Self-signed join request (proof of possession of the new Ed25519 key;
    the CSR proves the TLS key). For a key rotation, ``previous_ed25519_key``
    signs :func:`rotation_message` over the new keys."""
    check_member_id(member_id)
    body = pb.JoinRequestBody(
        member_id=member_id,
        name=name,
        role=role_to_pb(role),
        tls_csr_der=make_csr(keys.tls_key, member_id),
        ed25519_public_key=ed25519_public_raw(keys.ed25519_key),
        paillier_n=paillier_n,
        x25519_public_key=x25519_public_raw(keys.x25519_key),
        endpoint=endpoint,
        created_at=_now() if created_at is None else created_at,
    )
    _check_join_body(body)
    body_bytes = body.SerializeToString(deterministic=True)
    req = pb.JoinRequest(body=body_bytes, signature=signing.sign(keys.ed25519_key, signing.JOIN_REQUEST, body_bytes))
    if previous_ed25519_key is not None:
        fp = join_request_fingerprint(body)
        req.predecessor_signature = signing.sign(previous_ed25519_key, signing.KEY_ROTATION, _rotation_message_for(member_id, fp, body))
    return req


def _check_join_body(body: pb.JoinRequestBody) -> None:
    who = f"join request for {body.member_id!r}"
    check_member_id(body.member_id)
    check_name(body.name, who)
    if body.role not in (pb.ROLE_MEMBER, pb.ROLE_AUDITOR):
        raise InvalidInput(f"{who}: role must be member or auditor")
    _load_csr(body.tls_csr_der, body.member_id)
    _check_member_keys(body.role, body.ed25519_public_key, body.x25519_public_key, body.paillier_n, body.endpoint, who)


def _parse(cls, data: bytes, what: str):
    try:
        return cls.FromString(data)
    except Exception:  # protobuf raises DecodeError, sometimes others on garbage
        raise InvalidInput(f"{what} is not a valid {cls.DESCRIPTOR.name}") from None


def verify_join_request(data: bytes | pb.JoinRequest) -> pb.JoinRequestBody:
    """Parse and check a join request: self-signature by the Ed25519 key it
    carries, CSR signature and curve, id/role/endpoint/keys well-formed. Does
    not check ``predecessor_signature`` (needs the registered key: see
    :func:`verify_join_rotation`)."""
    req = data if isinstance(data, pb.JoinRequest) else _parse(pb.JoinRequest, data, "join request")
    body = _parse(pb.JoinRequestBody, req.body, "join request body")
    who = f"join request for {body.member_id!r}"
    check_ed25519_public(body.ed25519_public_key, who)
    signing.verify(body.ed25519_public_key, signing.JOIN_REQUEST, req.body, req.signature, what=who)
    _check_join_body(body)
    if req.predecessor_signature and len(req.predecessor_signature) != signing.ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{who}: malformed predecessor signature")
    return body


def verify_join_rotation(data: bytes | pb.JoinRequest, previous_ed25519_public: bytes) -> pb.JoinRequestBody:
    """For re-keying a known member: the request must carry a rotation
    signature by the member's currently registered Ed25519 key."""
    req = data if isinstance(data, pb.JoinRequest) else _parse(pb.JoinRequest, data, "join request")
    body = verify_join_request(req)
    who = f"key rotation for {body.member_id!r}"
    if not req.predecessor_signature:
        raise CryptoError(f"{who}: no signature by the member's previous key")
    msg = _rotation_message_for(body.member_id, join_request_fingerprint(body), body)
    signing.verify(previous_ed25519_public, signing.KEY_ROTATION, msg, req.predecessor_signature, what=who)
    return body


def join_request_fingerprint(body: pb.JoinRequestBody) -> bytes:
    """The fingerprint the member printed at keygen, recomputed from the request."""
    csr = _load_csr(body.tls_csr_der, body.member_id)
    return member_fingerprint(spki_der(csr.public_key()), body.ed25519_public_key, body.x25519_public_key, body.paillier_n)


# ---------------------------------------------------------------------------
# Credentials


def issue_credential(
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    join_body: pb.JoinRequestBody,
    tls_cert: x509.Certificate,
    serial: int,
    not_before: int,
    not_after: int,
    predecessor_signature: bytes = b"",
) -> pb.Credential:
    """CA-signed credential (ECDSA-SHA256 over CREDENTIAL ‖ body). Refuses a
    TLS certificate that is not the CA's, not for this member, or not for the
    key in the join request's CSR."""
    _check_join_body(join_body)
    who = f"credential for {join_body.member_id!r}"
    if not 0 < serial < 2**64:
        raise InvalidInput(f"{who}: serial must be a positive 64-bit integer")
    if not_after <= not_before:
        raise InvalidInput(f"{who}: not_after must be after not_before")
    csr = _load_csr(join_body.tls_csr_der, join_body.member_id)
    if spki_der(tls_cert.public_key()) != spki_der(csr.public_key()):
        raise CryptoError(f"{who}: TLS certificate is not for the key in the join request")
    try:
        ca_key.public_key().verify(tls_cert.signature, tls_cert.tbs_certificate_bytes, ec.ECDSA(tls_cert.signature_hash_algorithm))
    except (InvalidSignature, ValueError, TypeError):
        raise CryptoError(f"{who}: TLS certificate was not issued by this CA") from None
    if peer_identity(tls_cert) != (join_body.member_id, role_name(join_body.role)):
        raise CryptoError(f"{who}: TLS certificate names a different member or role")
    if predecessor_signature and len(predecessor_signature) != signing.ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{who}: malformed predecessor signature")
    body = pb.CredentialBody(
        member_id=join_body.member_id,
        name=join_body.name,
        role=join_body.role,
        tls_cert_sha256=cert_sha256(tls_cert),
        ed25519_public_key=join_body.ed25519_public_key,
        paillier_n=join_body.paillier_n,
        x25519_public_key=join_body.x25519_public_key,
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        member_fingerprint=join_request_fingerprint(join_body),
        endpoint=join_body.endpoint,
        tls_public_key_der=spki_der(csr.public_key()),
    )
    body_bytes = body.SerializeToString(deterministic=True)
    sig = ca_key.sign(signing.CREDENTIAL + body_bytes, ec.ECDSA(hashes.SHA256()))
    return pb.Credential(body=body_bytes, ca_signature=sig, predecessor_signature=predecessor_signature)


def verify_credential(cred: bytes | pb.Credential, ca_cert: x509.Certificate, *, now: int | None = None) -> pb.CredentialBody:
    """CA signature, validity window and well-formed keys. A valid credential
    means only "the operator admitted this"; pin it (:func:`check_pin`) before
    trusting its keys against the operator."""
    c = cred if isinstance(cred, pb.Credential) else _parse(pb.Credential, cred, "credential")
    ca_pub = ca_cert.public_key()
    if not isinstance(ca_pub, ec.EllipticCurvePublicKey) or not isinstance(ca_pub.curve, ec.SECP256R1):
        raise CryptoError("alliance CA certificate must hold an ECDSA P-256 key")
    try:
        ca_pub.verify(c.ca_signature, signing.CREDENTIAL + c.body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise CryptoError("credential is not signed by this alliance CA") from None
    body = _parse(pb.CredentialBody, c.body, "credential body")
    who = f"credential for {body.member_id!r}"
    check_member_id(body.member_id)
    if body.role not in (pb.ROLE_MEMBER, pb.ROLE_AUDITOR):
        raise CryptoError(f"{who}: role must be member or auditor")
    if len(body.tls_cert_sha256) != 32 or len(body.member_fingerprint) != 32:
        raise CryptoError(f"{who}: malformed TLS certificate hash or fingerprint")
    _check_member_keys(body.role, body.ed25519_public_key, body.x25519_public_key, body.paillier_n, body.endpoint, who)
    if body.serial == 0:
        raise CryptoError(f"{who}: serial 0 is not valid")
    # The fingerprint is recomputed, never taken on the CA's word: otherwise an
    # operator could keep a member's real fingerprint while swapping a key.
    fp = member_fingerprint(body.tls_public_key_der, body.ed25519_public_key, body.x25519_public_key, body.paillier_n)
    if fp != body.member_fingerprint:
        raise CryptoError(f"{who}: member fingerprint does not match the keys it binds")
    if c.predecessor_signature and len(c.predecessor_signature) != signing.ED25519_SIGNATURE_SIZE:
        raise CryptoError(f"{who}: malformed predecessor signature")
    t = _now() if now is None else now
    if t < body.not_before:
        raise Refused(f"{who} is not valid before {_utc(body.not_before)}", reason="credential_not_yet_valid")
    if t >= body.not_after:
        raise Refused(f"{who} expired at {_utc(body.not_after)}", reason="credential_expired")
    return body


def check_credential_fingerprint(body: pb.CredentialBody, tls_cert: x509.Certificate | bytes) -> None:
    """Recompute ``member_fingerprint`` when the TLS certificate is at hand:
    it must hash to ``tls_cert_sha256`` and, with the body's other keys, give
    the fingerprint the CA wrote. Use before comparing fingerprints out of band."""
    who = f"credential for {body.member_id!r}"
    cert = as_certificate(tls_cert)
    if cert_sha256(cert) != body.tls_cert_sha256:
        raise CryptoError(f"{who}: TLS certificate does not match the credential")
    fp = member_fingerprint(spki_der(cert.public_key()), body.ed25519_public_key, body.x25519_public_key, body.paillier_n)
    if fp != body.member_fingerprint:
        raise CryptoError(f"{who}: member fingerprint does not match its keys")


def check_credential_keys(body: pb.CredentialBody, keys: MemberKeys, paillier_n: bytes, tls_cert: x509.Certificate | None = None) -> None:
    """For a member installing its own credential: the CA must have bound our
    keys, not substitutes."""
    who = f"credential for {body.member_id!r}"
    if (
        body.ed25519_public_key != ed25519_public_raw(keys.ed25519_key)
        or body.x25519_public_key != x25519_public_raw(keys.x25519_key)
        or body.paillier_n != paillier_n
        or body.member_fingerprint != keys_fingerprint(keys, paillier_n)
    ):
        raise CryptoError(f"{who} does not carry this member's keys")
    if tls_cert is not None:
        if cert_sha256(tls_cert) != body.tls_cert_sha256 or spki_der(tls_cert.public_key()) != spki_der(keys.tls_key):
            raise CryptoError(f"{who}: TLS certificate does not match this member's TLS key")


# ---------------------------------------------------------------------------
# Pinning (trust on first use, SPEC §5)


@dataclass(frozen=True)
class Pin:
    """What a member remembers about a peer. The actual keys are kept, not just
    the CA-asserted fingerprint, so a credential repeating the fingerprint with
    other keys is caught."""

    member_id: str
    fingerprint: bytes
    ed25519_public_key: bytes
    serial: int
    x25519_public_key: bytes
    paillier_n: bytes

    def to_json(self) -> dict:
        return {
            "member_id": self.member_id,
            "fingerprint": self.fingerprint.hex(),
            "ed25519_public_key": self.ed25519_public_key.hex(),
            "serial": self.serial,
            "x25519_public_key": self.x25519_public_key.hex(),
            "paillier_n": self.paillier_n.hex(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Pin":
        return cls(
            member_id=d["member_id"],
            fingerprint=bytes.fromhex(d["fingerprint"]),
            ed25519_public_key=bytes.fromhex(d["ed25519_public_key"]),
            serial=int(d["serial"]),
            x25519_public_key=bytes.fromhex(d["x25519_public_key"]),
            paillier_n=bytes.fromhex(d["paillier_n"]),
        )


def pin_from(body: pb.CredentialBody) -> Pin:
    return Pin(
        member_id=body.member_id,
        fingerprint=bytes(body.member_fingerprint),
        ed25519_public_key=bytes(body.ed25519_public_key),
        serial=body.serial,
        x25519_public_key=bytes(body.x25519_public_key),
        paillier_n=bytes(body.paillier_n),
    )


def check_pin(pinned: Pin | None, cred: pb.Credential, body: pb.CredentialBody) -> tuple[str, Pin]:
    """Compare a verified credential (``body`` from :func:`verify_credential`)
    with the pin for its member id. Returns ("new"|"same"|"rotated", pin to
    store). Different keys are accepted only with ``cred.predecessor_signature``
    by the pinned Ed25519 key over :func:`rotation_message` for the new keys;
    otherwise CryptoError — the CA cannot swap a member's keys silently."""
    if _parse(pb.CredentialBody, cred.body, "credential body") != body:
        raise CryptoError(f"credential for {body.member_id!r}: body does not match the credential bytes")
    new = pin_from(body)
    if pinned is None:
        return "new", new
    if pinned.member_id != body.member_id:
        raise CryptoError(f"pin for {pinned.member_id!r} checked against a credential for {body.member_id!r}")
    same_keys = (
        new.ed25519_public_key == pinned.ed25519_public_key
        and new.x25519_public_key == pinned.x25519_public_key
        and new.paillier_n == pinned.paillier_n
    )
    if same_keys and new.fingerprint == pinned.fingerprint:
        return "same", (new if new.serial >= pinned.serial else pinned)
    if new.fingerprint == pinned.fingerprint:
        raise CryptoError(f"a second credential for member {body.member_id} repeats its pinned fingerprint with different keys")
    if not cred.predecessor_signature:
        raise CryptoError(f"a second credential for member {body.member_id} is not signed by its pinned key")
    try:
        signing.verify(
            pinned.ed25519_public_key,
            signing.KEY_ROTATION,
            _rotation_message_for(body.member_id, bytes(body.member_fingerprint), body),
            cred.predecessor_signature,
            what=f"key rotation for {body.member_id}",
        )
    except CryptoError:
        raise CryptoError(f"a second credential for member {body.member_id} is not signed by its pinned key") from None
    return "rotated", new


class PinStore:
    """Pins in one JSON file, rewritten atomically under an exclusive lock.
    A deliberate :meth:`remove` (after an out-of-band check) is the only way to
    accept a member that lost its previous key."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Pin]:
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise InvalidInput(f"{self.path}: pin store is not valid JSON ({exc})") from None
        if raw.get("version") != 1:
            raise InvalidInput(f"{self.path}: unsupported pin store version")
        return {mid: Pin.from_json(d) for mid, d in raw.get("pins", {}).items()}

    def _write(self, pins: dict[str, Pin]) -> None:
        data = {"version": 1, "pins": {mid: p.to_json() for mid, p in sorted(pins.items())}}
        write_file_atomic(self.path, json.dumps(data, indent=2).encode("utf-8") + b"\n", mode=0o600, overwrite=True)

    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path.with_name(self.path.name + ".lock"), "a")
        fcntl.flock(fh, fcntl.LOCK_EX)
        return fh

    def all(self) -> dict[str, Pin]:
        return self._read()

    def get(self, member_id: str) -> Pin | None:
        return self._read().get(member_id)

    def put(self, pin: Pin) -> None:
        with self._locked():
            pins = self._read()
            pins[pin.member_id] = pin
            self._write(pins)

    def remove(self, member_id: str) -> bool:
        with self._locked():
            pins = self._read()
            found = pins.pop(member_id, None) is not None
            if found:
                self._write(pins)
            return found

    def check(self, cred: pb.Credential, body: pb.CredentialBody) -> str:
        """check_pin against the stored pin and store the result, atomically."""
        with self._locked():
            pins = self._read()
            status, pin = check_pin(pins.get(body.member_id), cred, body)
            if pins.get(body.member_id) != pin:
                pins[pin.member_id] = pin
                self._write(pins)
            return status

"""The alliance CA and mutual-TLS certificates (SPEC §5.2: roles in URI SANs, the reserved gateway name, loopback names only in local mode)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alliance.errors import CryptoError, InvalidInput, Refused
from alliance.pki.base import _is_dns_name, GATEWAY_TLS_NAME, MEMBER_ID_RE, MEMBER_URI_PREFIX, RESERVED_DOMAIN, ROLE_URI_PREFIX, TLS_ROLES, check_member_id, role_to_pb

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

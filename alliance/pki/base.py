"""Constants, small helpers, private key and certificate files (SPEC §5.4: private keys only at 0600; the CA key's passphrase)."""
from __future__ import annotations

import datetime as _dt
import errno
import os
import re
import stat
import struct
import tempfile
import time
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from alliance.errors import InvalidInput, Refused
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

def _is_dns_name(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", lab) for lab in labels)

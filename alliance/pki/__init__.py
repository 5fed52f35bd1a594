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

from alliance.pki.base import CA_PASSPHRASE_ENV, CREDENTIAL_ROLES, FINGERPRINT_PREFIX, GATEWAY_TLS_NAME, LOOPBACK_NAMES, MAX_NAME_CHARS, MEMBER_ID_RE, MEMBER_URI_PREFIX, PAILLIER_MAX_BITS, PAILLIER_MIN_BITS, PathLike, PrivateKey, RESERVED_DOMAIN, ROLE_URI_PREFIX, TLS_ROLES, _PB_TO_ROLE, _ROLE_TO_PB, _lp, _now, _utc, cert_pem, check_member_id, ed25519_public_raw, is_encrypted_pem, load_ca_key, load_cert_pem, load_ec_private_pem, load_ed25519_private_pem, load_private_pem, load_x25519_private_pem, private_pem, read_passphrase_file, read_private_file, resolve_ca_passphrase, role_name, role_to_pb, spki_der, tls_key_pem, write_cert_pem, write_file_atomic, write_private_pem, x25519_public_raw  # noqa: F401
from alliance.pki.certificates import _host_san, _load_csr, _name, as_certificate, cert_sha256, create_ca, is_loopback_host, is_reserved_host, issue_tls_certificate, make_csr, new_tls_key, peer_identity  # noqa: F401
from alliance.pki.member_keys import MemberKeys, _check_member_keys, _is_dns_name, check_ed25519_public, check_endpoint, check_name, check_paillier_n, check_x25519_public, format_fingerprint, generate_member_keys, keys_fingerprint, member_fingerprint, parse_fingerprint  # noqa: F401
from alliance.pki.issuing import _check_join_body, _parse, _rotation_message_for, issue_credential, join_request_fingerprint, make_join_request, rotation_message, verify_join_request, verify_join_rotation  # noqa: F401
from alliance.pki.verifying import check_credential_fingerprint, check_credential_keys, verify_credential  # noqa: F401
from alliance.pki.pinning import Pin, PinStore, check_pin, pin_from  # noqa: F401

"""Matching key creation, storage and HPKE-style hand-over (SPEC §3)."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from alliance import matching_key as mkmod
from alliance import pki, signing
from alliance.errors import CryptoError, InvalidInput, Refused
from alliance.v1 import alliance_pb2 as pb

NOW = 1_760_000_000


class Member:
    def __init__(self, member_id: str):
        self.id = member_id
        self.ed = Ed25519PrivateKey.generate()
        self.x = X25519PrivateKey.generate()

    @property
    def ed_pub(self) -> bytes:
        return pki.ed25519_public_raw(self.ed)

    @property
    def x_pub(self) -> bytes:
        return pki.x25519_public_raw(self.x)


@pytest.fixture
def alice():
    return Member("bank-a")


@pytest.fixture
def bob():
    return Member("bank-b")


@pytest.fixture
def mk():
    return mkmod.create(epoch=3)


def seal(mk, sender, recipient, **kw):
    args = dict(sender_id=sender.id, sender_ed25519_key=sender.ed, recipient_id=recipient.id,
                recipient_x25519_public=recipient.x_pub, now=NOW)
    args.update(kw)
    return mkmod.seal_share(mk, **args)


def open_as(share, recipient, sender, expected, **kw):
    args = dict(recipient_id=recipient.id, recipient_x25519_key=recipient.x,
                sender_ed25519_public=sender.ed_pub, expected_check_value=expected)
    args.update(kw)
    return mkmod.open_share(share, **args)


def resign(share, sender, **changes) -> pb.MatchingKeyShare:
    """What a sender (or its stolen key) could produce: a modified body, validly signed."""
    body = pb.MatchingKeyShareBody.FromString(share.body)
    for k, v in changes.items():
        setattr(body, k, v)
    raw = body.SerializeToString()
    return pb.MatchingKeyShare(body=raw, signature=signing.sign(sender.ed, signing.MATCHING_KEY_SHARE, raw))


# ---------------------------------------------------------------------------
# Key, check value, storage


def test_create_and_check_value(mk):
    assert len(mk.key) == 32 and mk.epoch == 3
    assert mkmod.create().key != mk.key
    assert mk.check_value == hmac.new(mk.key, b"UDS1|check", hashlib.sha256).digest()[:8]
    assert mkmod.check_value(mk.key) == mk.check_value
    text = mkmod.format_check_value(mk.check_value)
    assert text.replace(":", "") == mk.check_value.hex()
    assert mkmod.parse_check_value(text) == mk.check_value


def test_repr_hides_key(mk):
    for text in (repr(mk), str(mk)):
        assert mk.key.hex() not in text and str(mk.key) not in text
        assert "epoch=3" in text


def test_invalid_keys_refused():
    with pytest.raises(InvalidInput):
        mkmod.MatchingKey(epoch=1, key=b"\x00" * 31)
    with pytest.raises(InvalidInput):
        mkmod.MatchingKey(epoch=0, key=b"\x00" * 32)
    with pytest.raises(InvalidInput):
        mkmod.parse_check_value("abcd")


def test_save_load_mode_0600(mk, tmp_path):
    path = tmp_path / "matching_key.json"
    mkmod.save(path, mk)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert mkmod.load(path) == mk
    with pytest.raises(InvalidInput, match="already exists"):
        mkmod.save(path, mkmod.create(4))
    mkmod.save(path, mkmod.create(4), overwrite=True)
    assert mkmod.load(path).epoch == 4
    os.chmod(path, 0o640)
    with pytest.raises(Refused):
        mkmod.load(path)


def test_load_detects_corruption(mk, tmp_path):
    path = tmp_path / "mk.json"
    mkmod.save(path, mk)
    text = path.read_text().replace(mk.key.hex(), secrets.token_bytes(32).hex())
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(CryptoError, match="check value"):
        mkmod.load(path)


# ---------------------------------------------------------------------------
# Hand-over


def test_share_round_trip(mk, alice, bob):
    share = seal(mk, alice, bob)
    got = open_as(share.SerializeToString(), bob, alice, mk.check_value, sender_id="bank-a")
    assert got.key == mk.key and got.epoch == 3 and got == mk
    body = mkmod.peek_share(share)
    assert body.sender_id == "bank-a" and body.recipient_id == "bank-b"
    assert mk.key not in share.SerializeToString()


def test_two_shares_differ(mk, alice, bob):
    a, b = seal(mk, alice, bob), seal(mk, alice, bob)
    assert mkmod.peek_share(a).ephemeral_public_key != mkmod.peek_share(b).ephemeral_public_key
    assert mkmod.peek_share(a).ciphertext != mkmod.peek_share(b).ciphertext


def test_wrong_recipient_key_refused(mk, alice, bob):
    share = seal(mk, alice, bob)
    impostor = Member("bank-b")  # same id, other X25519 key
    with pytest.raises(CryptoError, match="another X25519 key"):
        open_as(share, impostor, alice, mk.check_value)


def test_wrong_recipient_id_refused(mk, alice, bob):
    share = seal(mk, alice, bob)
    with pytest.raises(CryptoError, match="addressed to 'bank-b'"):
        open_as(share, bob, alice, mk.check_value, recipient_id="bank-c")


def test_tampered_ciphertext_refused(mk, alice, bob):
    share = seal(mk, alice, bob)
    body = pb.MatchingKeyShareBody.FromString(share.body)
    ct = bytearray(body.ciphertext)
    ct[0] ^= 1
    # Unsigned tampering: the signature catches it.
    body.ciphertext = bytes(ct)
    with pytest.raises(CryptoError, match="signature"):
        open_as(pb.MatchingKeyShare(body=body.SerializeToString(), signature=share.signature), bob, alice, mk.check_value)
    # Even re-signed, GCM catches it.
    with pytest.raises(CryptoError, match="does not decrypt"):
        open_as(resign(share, alice, ciphertext=bytes(ct)), bob, alice, mk.check_value)


def test_flipped_body_byte_refused(mk, alice, bob):
    share = seal(mk, alice, bob)
    for i in range(len(share.body)):
        raw = bytearray(share.body)
        raw[i] ^= 0x80
        with pytest.raises((CryptoError, InvalidInput)):
            open_as(pb.MatchingKeyShare(body=bytes(raw), signature=share.signature), bob, alice, mk.check_value)


def test_tampered_epoch_refused(mk, alice, bob):
    share = seal(mk, alice, bob)
    body = pb.MatchingKeyShareBody.FromString(share.body)
    body.epoch = 4
    with pytest.raises(CryptoError, match="signature"):
        open_as(pb.MatchingKeyShare(body=body.SerializeToString(), signature=share.signature), bob, alice, mk.check_value)
    # The epoch is bound into the encryption too, not only the signature.
    with pytest.raises(CryptoError, match="does not decrypt"):
        open_as(resign(share, alice, epoch=4), bob, alice, mk.check_value)


def test_sender_id_bound_into_encryption(mk, alice, bob):
    share = seal(mk, alice, bob)
    carol = Member("bank-c")
    # Carol re-signs Alice's share as her own: the binding still names bank-a.
    with pytest.raises(CryptoError, match="does not decrypt"):
        open_as(resign(share, carol, sender_id="bank-c"), bob, carol, mk.check_value)


def test_signature_by_another_sender_refused(mk, alice, bob):
    mallory = Member("bank-a")  # claims to be bank-a
    share = seal(mk, mallory, bob)
    with pytest.raises(CryptoError, match="signature does not verify"):
        open_as(share, bob, alice, mk.check_value)
    with pytest.raises(CryptoError, match="expected a share from 'bank-c'"):
        open_as(seal(mk, alice, bob), bob, alice, mk.check_value, sender_id="bank-c")


def test_wrong_expected_check_value_refused(mk, alice, bob):
    share = seal(mk, alice, bob)
    with pytest.raises(CryptoError, match="not the published"):
        open_as(share, bob, alice, mkmod.create().check_value)


def test_planted_key_refused_even_with_consistent_body(mk, alice, bob):
    """The operator (or a compromised sender) cannot plant its own key: the
    decrypted key must have the founding member's published check value."""
    planted = mkmod.create(epoch=3)
    share = seal(planted, alice, bob)
    with pytest.raises(CryptoError):
        open_as(share, bob, alice, mk.check_value)
    # A body whose check value is rewritten to the published one still fails.
    with pytest.raises(CryptoError, match="decrypted key does not have the published check value"):
        open_as(resign(share, alice, check_value=mk.check_value), bob, alice, mk.check_value)


def test_low_order_recipient_key_refused(mk, alice):
    with pytest.raises(CryptoError):
        mkmod.seal_share(mk, sender_id=alice.id, sender_ed25519_key=alice.ed, recipient_id="bank-b",
                         recipient_x25519_public=b"\x00" * 32, now=NOW)


# ---------------------------------------------------------------------------
# The operator admits a fake member


def _credential(ca, member_id, serial):
    """CA-side issuance of a credential with keys of the CA's choosing."""
    ca_key, ca_cert = ca
    tls = pki.new_tls_key()
    ed = Ed25519PrivateKey.generate()
    x = X25519PrivateKey.generate()
    keys = pki.MemberKeys(tls_key=tls, ed25519_key=ed, x25519_key=x)
    n = (secrets.randbits(2048) | (1 << 2047) | 1).to_bytes(256, "big")
    req = pki.make_join_request(member_id=member_id, name=member_id, role="member", endpoint="127.0.0.1:1",
                                keys=keys, paillier_n=n, created_at=NOW)
    body = pki.verify_join_request(req)
    now = dt.datetime.now(dt.timezone.utc)
    cert = pki.issue_tls_certificate(ca_key, ca_cert, tls.public_key(), member_id=member_id, role="member",
                                     not_before=now, not_after=now + dt.timedelta(days=1))
    cred = pki.issue_credential(ca_key=ca_key, join_body=body, tls_cert=cert, serial=serial,
                                not_before=NOW - 10, not_after=NOW + 86_400)
    return keys, cred


def test_fake_member_admitted_by_ca_cannot_open_share(mk, alice):
    ca = pki.create_ca("alliance")
    # The real newcomer bank-b enrols; Alice pins its credential (fingerprint
    # confirmed out of band) and seals to its X25519 key.
    bob_keys, bob_cred = _credential(ca, "bank-b", 1)
    bob_body = pki.verify_credential(bob_cred, ca[1], now=NOW)
    store = {}
    status, store["bank-b"] = pki.check_pin(None, bob_cred, bob_body)
    assert status == "new"
    share = mkmod.seal_share(mk, sender_id=alice.id, sender_ed25519_key=alice.ed, recipient_id="bank-b",
                             recipient_x25519_public=bob_body.x25519_public_key, now=NOW)

    # 1. A fake member "mallory" with a valid credential cannot open it, under
    #    its own id or claiming bank-b's.
    mal_keys, mal_cred = _credential(ca, "mallory", 2)
    pki.verify_credential(mal_cred, ca[1], now=NOW)
    for rid in ("mallory", "bank-b"):
        with pytest.raises(CryptoError):
            mkmod.open_share(share, recipient_id=rid, recipient_x25519_key=mal_keys.x25519_key,
                             sender_ed25519_public=alice.ed_pub, expected_check_value=mk.check_value)

    # 2. A second CA-issued credential for bank-b with the operator's X25519
    #    key is refused by Alice's pin, so she never seals to it.
    fake_keys, fake_cred = _credential(ca, "bank-b", 3)
    fake_body = pki.verify_credential(fake_cred, ca[1], now=NOW)
    with pytest.raises(CryptoError, match="not signed by its pinned key"):
        pki.check_pin(store["bank-b"], fake_cred, fake_body)

    # 3. Even a share sealed to the fake key (had Alice skipped pinning) cannot
    #    be redirected: the real share is bound to bank-b's real key.
    with pytest.raises(CryptoError):
        mkmod.open_share(share, recipient_id="bank-b", recipient_x25519_key=fake_keys.x25519_key,
                         sender_ed25519_public=alice.ed_pub, expected_check_value=mk.check_value)

    # The genuine bank-b opens it.
    got = mkmod.open_share(share, recipient_id="bank-b", recipient_x25519_key=bob_keys.x25519_key,
                           sender_ed25519_public=alice.ed_pub, expected_check_value=mk.check_value)
    assert got.key == mk.key


def test_recipient_binding_survives_relabelling(mk, alice, bob):
    """A share for bank-b relabelled (and re-signed) for mallory's key cannot be
    decrypted by mallory: the ciphertext is under bank-b's X25519 key."""
    share = seal(mk, alice, bob)
    mallory = Member("mallory")
    forged = resign(share, alice, recipient_id="mallory", recipient_x25519_public_key=mallory.x_pub)
    with pytest.raises(CryptoError, match="does not decrypt"):
        open_as(forged, mallory, alice, mk.check_value)

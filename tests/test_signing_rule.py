"""The alliance's one Ed25519 rule (alliance/signing.py, ``ed25519_valid``):
OpenSSL's verification under a key that is canonical and not of small
order, with libsodium's (stricter) yes taken first because it is twice as
fast. Pinned here against OpenSSL itself (the `cryptography` package, which
signs here) over every low-order and non-canonical encoding as key and as
R, edge values of S, honest keys beside them, and signatures valid only
under cofactored verification. The points are constants of edwards25519;
the cofactored-only signature is made here with independent affine
arithmetic."""
from __future__ import annotations

import hashlib
import itertools

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from alliance import signing

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the prime order of the base point (RFC 8032 §5.1)


def _enc(y: int, sign: int = 0) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


# The eight points of small order (y coordinates; RFC 7748 / edwards25519) and their
# non-canonical encodings: y + p where it still fits in 255 bits, and the sign bit
# set where x = 0 (only the non-negative x exists there).
_ORDER_8_Y = int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little")
_ORDER_8_Y2 = int.from_bytes(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little")
LOW_ORDER = [_enc(1), _enc(P - 1), _enc(0), _enc(0, 1),
             _enc(_ORDER_8_Y), _enc(_ORDER_8_Y, 1), _enc(_ORDER_8_Y2), _enc(_ORDER_8_Y2, 1)]
NON_CANONICAL = [_enc(1, 1), _enc(P - 1, 1), _enc(P), _enc(P, 1), _enc(P + 1), _enc(P + 1, 1)]


def _openssl_valid(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# Affine edwards25519 arithmetic (RFC 8032 §5.1), independent of both libraries.
_D = -121665 * pow(121666, -1, P) % P
Point = tuple[int, int]


def _decode(b: bytes) -> Point:
    n = int.from_bytes(b, "little")
    y, sign = (n & ((1 << 255) - 1)) % P, n >> 255
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    assert (x * x - x2) % P == 0
    if x & 1 != sign and x:
        x = P - x
    return x, y


def _add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % P
    return ((x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P)


def _mul(k: int, point: Point) -> Point:
    acc = (0, 1)
    while k:
        if k & 1:
            acc = _add(acc, point)
        point, k = _add(point, point), k >> 1
    return acc


def _point_enc(point: Point) -> bytes:
    return _enc(point[1], point[0] & 1)


_BASE = _decode(_enc(4 * pow(5, -1, P) % P))  # y = 4/5, x even


def test_low_order_points_are_of_low_order() -> None:
    """The constants above: 8·P is the identity for each (checked with
    independent affine arithmetic, not with either library)."""
    for enc in LOW_ORDER:
        assert _mul(8, _decode(enc)) == (0, 1), enc.hex()


def _signed(seed: int) -> tuple[bytes, bytes, bytes]:
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"rule %d" % seed).digest())
    message = b"alliance signing rule %d" % seed
    return key.public_key().public_bytes_raw(), key.sign(message), message


def test_honest_signatures_verify_under_both_and_tampering_under_neither() -> None:
    for seed in range(50):
        key, sig, msg = _signed(seed)
        assert signing.ed25519_valid(key, sig, msg) and _openssl_valid(key, sig, msg)
        for i in (0, 31, 32, 63):
            bad = bytearray(sig)
            bad[i] ^= 0x01
            assert not signing.ed25519_valid(key, bytes(bad), msg)
        assert not signing.ed25519_valid(key, sig, msg + b"!")
        other, _, _ = _signed(seed + 1000)
        assert not signing.ed25519_valid(other, sig, msg)
        assert not signing.ed25519_valid(key, sig[:63], msg) and not signing.ed25519_valid(key[:31], sig, msg)


def test_the_rule_refuses_the_malleable_twin_of_a_valid_signature() -> None:
    """S + L verifies the same equation; a rule that took it would let
    anyone make a second valid signature for a logged answer."""
    key, sig, msg = _signed(7)
    s = int.from_bytes(sig[32:], "little")
    twin = sig[:32] + (s + L).to_bytes(32, "little")
    assert not signing.ed25519_valid(key, twin, msg)


def test_the_rule_refuses_a_small_order_key_that_openssl_accepts() -> None:
    """With the identity as key and R, S = 0 satisfies the equation for
    every message: OpenSSL accepts it, the alliance's rule does not."""
    identity = _enc(1)
    sig = identity + bytes(32)
    for msg in (b"one message", b"any other"):
        assert _openssl_valid(identity, sig, msg)
        assert not signing.ed25519_valid(identity, sig, msg)


@pytest.mark.parametrize("message", [b"", b"alliance", bytes(range(200))])
def test_the_rule_is_openssls_under_an_acceptable_key(message: bytes) -> None:
    """Every low-order and non-canonical encoding as key and as R, with
    S in {0, 1, L−1, L, L+1, an honest S}, and honest keys and R beside them:
    the rule says yes exactly when OpenSSL does and the key is acceptable."""
    honest_key, honest_sig, _ = _signed(3)
    keys = LOW_ORDER + NON_CANONICAL + [honest_key]
    rs = LOW_ORDER + NON_CANONICAL + [honest_sig[:32]]
    ss = [0, 1, L - 1, L, L + 1, int.from_bytes(honest_sig[32:], "little")]
    accepted_by_openssl_only = 0
    for key, r, s in itertools.product(keys, rs, ss):
        sig = r + s.to_bytes(32, "little")
        ours, theirs = signing.ed25519_valid(key, sig, message), _openssl_valid(key, sig, message)
        assert ours == (theirs and signing.ed25519_key_acceptable(key)), (key.hex(), sig.hex())
        accepted_by_openssl_only += theirs and not ours
    assert accepted_by_openssl_only > 0  # the set does reach keys the rule refuses


def test_every_small_order_or_non_canonical_key_is_unacceptable_and_honest_ones_are_fine() -> None:
    assert not any(signing.ed25519_key_acceptable(k) for k in LOW_ORDER + NON_CANONICAL)
    assert all(signing.ed25519_key_acceptable(_signed(seed)[0]) for seed in range(50))
    assert not signing.ed25519_key_acceptable(bytes(31)) and not signing.ed25519_key_acceptable(bytes(33))


def _sig_with_r(a: int, r_point: Point, message: bytes, r_scalar: int) -> tuple[bytes, bytes]:
    """A signature by key aB with the given R point (nonce r_scalar for its prime-order part)."""
    key, r = _point_enc(_mul(a, _BASE)), _point_enc(r_point)
    h = int.from_bytes(hashlib.sha512(r + key + message).digest(), "little") % L
    return key, r + ((r_scalar + h * a) % L).to_bytes(32, "little")


def test_a_signature_valid_only_under_cofactored_verification_is_refused() -> None:
    """R = rB + T with T of order 2 under an honest key: 8(SB − R − hA) is
    the identity, SB − R − hA is not. OpenSSL refuses it, so must the rule,
    whatever libsodium build is installed (a cofactored one is not used)."""
    a, r, msg = 12345678901234567890 % L, 98765432109876543210 % L, b"cofactored only"
    key, sig = _sig_with_r(a, _add(_mul(r, _BASE), (0, P - 1)), msg, r)
    assert not _openssl_valid(key, sig, msg)
    assert not signing.ed25519_valid(key, sig, msg)
    assert not signing.ed25519_valid(*signing._ED25519_COFACTORED_ONLY)  # the module's own check vector
    assert not _openssl_valid(*signing._ED25519_COFACTORED_ONLY)
    key, sig = _sig_with_r(a, _mul(r, _BASE), msg, r)  # the same without T: valid everywhere
    assert _openssl_valid(key, sig, msg) and signing.ed25519_valid(key, sig, msg)


def test_a_libsodium_that_verified_cofactored_would_not_be_trusted_for_the_fast_path() -> None:
    assert signing._SODIUM_FAST_PATH  # the pinned PyNaCl's libsodium: cofactorless
    assert not signing._sodium_agrees(lambda key, sig, msg: True)


def test_r_of_small_order_under_an_honest_key_is_valid_as_openssl_says() -> None:
    """libsodium refuses R of small order; OpenSSL, which wrote every earlier
    release's logs, accepts it under an honest key. The rule follows OpenSSL,
    so a log an earlier gateway wrote with such a signature still verifies."""
    a, msg = 555555555555555 % L, b"a request signed by an old client"
    key, sig = _sig_with_r(a, (0, 1), msg, 0)  # R = identity, S = h·a
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    with pytest.raises(BadSignatureError):
        crypto_sign_open(sig + msg, key)
    assert _openssl_valid(key, sig, msg) and signing.ed25519_valid(key, sig, msg)


def test_enrolment_and_log_keys_of_small_order_are_refused_by_name() -> None:
    """Under a key of small order no signature can be trusted (OpenSSL took
    S = 0 for every message); a join, a credential or a log key carrying one
    is refused with that reason, not later with "does not verify"."""
    import base64

    from alliance import checkpoint, pki
    from alliance.errors import CryptoError

    for key in LOW_ORDER + NON_CANONICAL:
        with pytest.raises(CryptoError, match="small order or not canonically encoded"):
            pki.check_ed25519_public(key, "join request for 'evil'")
        kid = checkpoint.key_id("log.example/test", key).hex()
        text = f"log.example/test+{kid}+" + base64.b64encode(b"\x01" + key).decode()
        with pytest.raises(CryptoError, match="small order or not canonically encoded"):
            checkpoint.parse_verifier_key(text)
    pki.check_ed25519_public(_signed(1)[0], "join request for 'honest'")

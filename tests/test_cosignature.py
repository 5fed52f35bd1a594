"""C2SP cosignature/v1 lines (SPEC §6.1), checked against the spec's own
construction rebuilt here independently, and the quorum rule."""
from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alliance import checkpoint, cosignature, witness_quorum
from alliance.errors import CryptoError

CP = checkpoint.Checkpoint("test.alliance/audit-log", 42, bytes(range(32)), ("membership 7",))


def _raw(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes_raw()


def test_a_line_is_the_spec_construction() -> None:
    k = Ed25519PrivateKey.generate()
    line = cosignature.cosign(CP, "lender-a", k, 1_700_000_000)
    name, b64 = line.removeprefix("\u2014 ").split(" ")
    blob = base64.b64decode(b64)
    assert name == "lender-a"
    assert blob[:4] == hashlib.sha256(b"lender-a\n\x04" + _raw(k)).digest()[:4]
    assert int.from_bytes(blob[4:12], "big") == 1_700_000_000
    message = b"cosignature/v1\ntime 1700000000\ntest.alliance/audit-log\n42\n" + base64.b64encode(bytes(range(32))) + b"\nmembership 7\n"
    k.public_key().verify(blob[12:], message)  # raises if the message differs


def test_verified_cosigners_and_quorum() -> None:
    keys = {m: Ed25519PrivateKey.generate() for m in ("a", "b", "c", "d", "e")}
    log_key = Ed25519PrivateKey.generate()
    note = checkpoint.sign_checkpoint(CP, "test.alliance/audit-log", log_key)
    lines = [cosignature.cosign(CP, m, keys[m], 100) for m in ("a", "b", "c")]
    note = cosignature.add_cosignatures(note, lines)
    witnesses = {m: _raw(k) for m, k in keys.items()}
    found = cosignature.verified_cosigners(note, CP, witnesses)
    assert found == {"a": 100, "b": 100, "c": 100}
    eligible = set(keys)
    assert cosignature.quorum(5) == 3 and cosignature.quorum(4) == 3 and cosignature.quorum(3) == 2
    assert cosignature.has_quorum(found, eligible)
    assert not cosignature.has_quorum(found, eligible, exclude="a")  # the decider's own does not count
    # the log still opens the note with the cosignature lines present
    assert checkpoint.open_checkpoint(note, checkpoint.parse_verifier_key(
        checkpoint.verifier_key("test.alliance/audit-log", log_key.public_key()))) == CP


def test_a_forged_or_misplaced_cosignature_fails() -> None:
    k = Ed25519PrivateKey.generate()
    line = cosignature.cosign(CP, "a", k, 100)
    other = checkpoint.Checkpoint(CP.origin, 43, CP.root_hash, CP.extensions)
    with pytest.raises(CryptoError):
        cosignature.verify_line(line, other, {"a": _raw(k)})  # a cosignature of another view
    assert cosignature.verify_line(line, CP, {"a": _raw(Ed25519PrivateKey.generate())}) is None  # another key: ignored
    with pytest.raises(CryptoError, match="future"):
        cosignature.verify_line(cosignature.cosign(CP, "a", k, 10_000), CP, {"a": _raw(k)}, now_s=1000)


def test_a_large_alliance_s_witnessed_checkpoint_opens_and_counts() -> None:
    """An alliance past 99 members: the log's line plus 150 cosignatures (the
    old limit of 100 signature lines refused such notes, so members would
    have trusted no witnessed checkpoint at all)."""
    log_key = Ed25519PrivateKey.generate()
    keys = {f"lender-{i:03d}": Ed25519PrivateKey.generate() for i in range(150)}
    note = cosignature.add_cosignatures(checkpoint.sign_checkpoint(CP, "test.alliance/audit-log", log_key),
                                        [cosignature.cosign(CP, m, k, 100) for m, k in keys.items()])
    assert note.count("\n\u2014 ") == 151
    verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key("test.alliance/audit-log", log_key.public_key()))
    assert checkpoint.open_checkpoint(note, verifier) == CP
    counted = witness_quorum.check_quorum(note, CP, eligible=set(keys), keys={m: [_raw(k)] for m, k in keys.items()},
                                          deciding="lender-000", now_s=1000)
    assert counted == set(keys) - {"lender-000"}


def test_a_note_with_more_signature_lines_than_the_bound_is_refused() -> None:
    log_key = Ed25519PrivateKey.generate()
    filler = cosignature.cosign(CP, "someone", Ed25519PrivateKey.generate(), 100)
    note = cosignature.add_cosignatures(checkpoint.sign_checkpoint(CP, "test.alliance/audit-log", log_key),
                                        [filler] * checkpoint.MAX_SIGNATURES)
    verifier = checkpoint.parse_verifier_key(checkpoint.verifier_key("test.alliance/audit-log", log_key.public_key()))
    with pytest.raises(CryptoError, match="signature lines, more than 200"):
        checkpoint.open_checkpoint(note, verifier)

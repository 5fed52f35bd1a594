"""alliance.checkpoint: C2SP tlog-checkpoint bodies in C2SP signed notes.

Besides round trips, the note format is pinned to the published vectors of
golang.org/x/mod/sumdb/note (note_test.go / example_test.go): Ed25519 is
deterministic, so our signer must reproduce Go's note byte for byte."""
from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from alliance.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    NoteVerifier,
    open_checkpoint,
    open_note,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key,
)
from alliance.errors import CryptoError
from alliance.merkle import EMPTY_ROOT, MemoryNodeStore, leaf_hash

EM = "\u2014"
ORIGIN = "alliance.example/audit-log"

# golang.org/x/mod/sumdb/note test vectors.
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_PETER_SIG = f"{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
GO_ENOCH_SIG = f"{EM} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"


def _raw(public_key) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _independent_key_id(name: str, public_key) -> bytes:
    return hashlib.sha256(name.encode() + b"\x0a" + b"\x01" + _raw(public_key)).digest()[:4]


@pytest.fixture(scope="module")
def log_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"alliance test log key").digest())


@pytest.fixture(scope="module")
def verifier(log_key) -> NoteVerifier:
    return parse_verifier_key(verifier_key(ORIGIN, log_key.public_key()))


def _checkpoint(size: int = 5) -> Checkpoint:
    store = MemoryNodeStore()
    for i in range(size):
        store.append(leaf_hash(b"entry %d" % i))
    return Checkpoint(ORIGIN, size, store.root())


# --- checkpoint bodies --------------------------------------------------------


def test_body_format_and_round_trip():
    cp = _checkpoint()
    assert cp.body() == f"{ORIGIN}\n5\n{base64.b64encode(cp.root_hash).decode()}\n"
    assert Checkpoint.parse(cp.body()) == cp
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    assert empty.body() == f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    assert Checkpoint.parse(empty.body()) == empty
    extended = Checkpoint(ORIGIN, 7, b"\x07" * 32, ("ext one", "— two"))
    assert extended.body().endswith("\next one\n— two\n")
    assert Checkpoint.parse(extended.body()) == extended
    assert Checkpoint(ORIGIN, 1, b"\x01" * 32, ["as list"]).extensions == ("as list",)


def test_parses_the_c2sp_spec_example_body():
    cp = Checkpoint.parse("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")
    assert (cp.origin, cp.size, len(cp.root_hash), cp.extensions) == ("example.com/behind-the-sofa", 20852163, 32, ())


ROOT_B64 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    "size",
    ["01", "00", "-1", "+1", "1.0", " 1", "1 ", "", "1e3", "0x10", "\u0661", "\uff11", "18446744073709551616"],
)
def test_parse_rejects_bad_sizes(size):
    with pytest.raises(CryptoError):
        Checkpoint.parse(f"{ORIGIN}\n{size}\n{ROOT_B64}\n")


@pytest.mark.parametrize(
    "root",
    [
        base64.b64encode(b"\x00" * 31).decode(),  # 31 bytes
        base64.b64encode(b"\x00" * 33).decode(),  # 33 bytes
        ROOT_B64.rstrip("="),  # missing padding
        ROOT_B64[:-2] + "F=",  # non-canonical trailing bits
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),  # URL-safe alphabet
        ROOT_B64 + " ",
        "",
        "not base64!",
    ],
)
def test_parse_rejects_bad_roots(root):
    with pytest.raises(CryptoError):
        Checkpoint.parse(f"{ORIGIN}\n5\n{root}\n")


@pytest.mark.parametrize(
    "body",
    [
        f"{ORIGIN}\n5\n{ROOT_B64}",  # no final newline
        f"{ORIGIN}\n5\n",  # too few lines
        f"\n5\n{ROOT_B64}\n",  # empty origin
        f"{ORIGIN}\n5\n{ROOT_B64}\n\n",  # empty extension line
        f"{ORIGIN}\n5\n{ROOT_B64}\nok\n\nx\n",
        f"{ORIGIN}\r\n5\n{ROOT_B64}\n",  # control character
        f"{ORIGIN}\x00\n5\n{ROOT_B64}\n",
        "",
    ],
)
def test_parse_rejects_malformed_bodies(body):
    with pytest.raises(CryptoError):
        Checkpoint.parse(body)


@pytest.mark.parametrize(
    "args",
    [
        ("", 1, b"\x00" * 32),
        ("a\nb", 1, b"\x00" * 32),
        (ORIGIN, -1, b"\x00" * 32),
        (ORIGIN, 2**64, b"\x00" * 32),
        (ORIGIN, True, b"\x00" * 32),
        (ORIGIN, 1, b"\x00" * 31),
        (ORIGIN, 1, "00" * 32),
        (ORIGIN, 1, b"\x00" * 32, ("",)),
        (ORIGIN, 1, b"\x00" * 32, ("two\nlines",)),
    ],
)
def test_constructor_refuses_what_it_could_not_encode(args):
    with pytest.raises(CryptoError):
        Checkpoint(*args)


# --- keys -----------------------------------------------------------------------


def test_key_id_and_verifier_key_computed_independently(log_key, verifier):
    kid = _independent_key_id(ORIGIN, log_key.public_key())
    assert verifier.key_id == kid
    assert verifier.name == ORIGIN
    assert _raw(verifier.public_key) == _raw(log_key.public_key())
    key_b64 = _b64(bytes([1]) + _raw(log_key.public_key()))
    expected = f"{ORIGIN}+{kid.hex()}+{key_b64}"
    assert verifier_key(ORIGIN, log_key.public_key()) == expected
    assert verifier_key(ORIGIN, _raw(log_key.public_key())) == expected
    assert parse_verifier_key(expected + "\n").key_id == kid  # a trailing newline from a file


def test_go_verifier_keys_parse():
    peter = parse_verifier_key(GO_PETER_VKEY)
    assert (peter.name, peter.key_id.hex()) == ("PeterNeumann", "c74f20a3")
    assert verifier_key(peter.name, peter.public_key) == GO_PETER_VKEY
    assert parse_verifier_key(GO_ENOCH_VKEY).key_id.hex() == "af0cfe78"


def test_verifier_key_whose_base64_contains_plus():
    # From transparency-dev/formats note tests: '+' inside the key material.
    text = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
    v = parse_verifier_key(text)
    assert (v.name, v.key_id.hex()) == ("TEST", "7997405c")
    assert verifier_key(v.name, v.public_key) == text


def test_parse_verifier_key_rejects_manglings(log_key):
    good = verifier_key(ORIGIN, log_key.public_key())
    name, kid, key = good.split("+", 2)
    raw = base64.b64decode(key)
    other_kid = f"{int(kid, 16) ^ 1:08x}"
    bad = [
        f"{name}+{other_kid}+{key}",  # key ID does not match
        f"other.example+{kid}+{key}",  # name does not match the key ID
        f"{name}+{kid}+{_b64(bytes([2]) + raw[1:])}",  # not Ed25519
        f"{name}+{kid}+{base64.b64encode(raw[:-1]).decode()}",  # short key
        f"{name}+{kid}+{_b64(raw + bytes(1))}",  # long key
        f"{name}+{kid[:-1]}+{key}",
        f"{name}+{kid}+{key}+extra",
        f"{name}+{kid}",
        f"+{kid}+{key}",
        f"has space+{kid}+{key}",
        f"{name}+{kid}+{key[:-1]}",
        "",
    ]
    for text in bad:
        with pytest.raises(CryptoError):
            parse_verifier_key(text)
    # Every single-character change to the Go key is refused too.
    for i in range(len(GO_PETER_VKEY)):
        mangled = GO_PETER_VKEY[:i] + chr(ord(GO_PETER_VKEY[i]) + 1) + GO_PETER_VKEY[i + 1 :]
        with pytest.raises(CryptoError):
            parse_verifier_key(mangled)


# --- signed notes -----------------------------------------------------------------


def test_sign_reproduces_go_note_byte_for_byte():
    seed = base64.b64decode(GO_PETER_SKEY.split("+", 4)[4])[1:]
    key = Ed25519PrivateKey.from_private_bytes(seed)
    assert verifier_key("PeterNeumann", key.public_key()) == GO_PETER_VKEY
    assert sign_note(GO_TEXT, "PeterNeumann", key) == GO_TEXT + "\n" + GO_PETER_SIG


def test_open_go_cosigned_note_with_either_key():
    note = GO_TEXT + "\n" + GO_PETER_SIG + GO_ENOCH_SIG
    assert open_note(note, parse_verifier_key(GO_PETER_VKEY)) == GO_TEXT
    assert open_note(note, parse_verifier_key(GO_ENOCH_VKEY)) == GO_TEXT
    with pytest.raises(CryptoError):
        open_note(note.replace("cryptography", "cryptographY"), parse_verifier_key(GO_PETER_VKEY))


def test_signed_checkpoint_round_trip_and_shape(log_key, verifier):
    cp = _checkpoint(37)
    note = sign_checkpoint(cp, ORIGIN, log_key)
    body, blank, sig_line = note.partition("\n\n")
    assert body + "\n" == cp.body() and blank
    assert sig_line.startswith(f"{EM} {ORIGIN} ") and sig_line.endswith("\n") and sig_line.count("\n") == 1
    blob = base64.b64decode(sig_line[len(f"{EM} {ORIGIN} ") : -1], validate=True)
    assert len(blob) == 68 and blob[:4] == _independent_key_id(ORIGIN, log_key.public_key())
    log_key.public_key().verify(blob[4:], cp.body().encode())  # signature over the body, final newline included
    assert open_note(note, verifier) == cp.body()
    assert open_checkpoint(note, verifier) == cp
    assert open_checkpoint(note, verifier, origin=ORIGIN) == cp
    with pytest.raises(CryptoError, match="origin"):
        open_checkpoint(note, verifier, origin="another.example/log")


def test_any_flipped_body_character_fails(log_key, verifier):
    cp = _checkpoint(1234)
    note = sign_checkpoint(cp, ORIGIN, log_key)
    body_len = len(cp.body()) - 1  # leave the final newline; removing it is another test
    for i in range(body_len):
        if note[i] == "\n":
            continue
        replacement = "A" if note[i] != "A" else "B"
        with pytest.raises(CryptoError):
            open_checkpoint(note[:i] + replacement + note[i + 1 :], verifier)


def test_any_flipped_signature_byte_fails(log_key, verifier):
    note = sign_checkpoint(_checkpoint(), ORIGIN, log_key)
    prefix, _, b64 = note.rpartition(" ")
    blob = base64.b64decode(b64)
    for i in range(len(blob)):
        for bit in (0, 7):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            with pytest.raises(CryptoError):
                open_note(f"{prefix} {base64.b64encode(bytes(bad)).decode()}\n", verifier)


def test_wrong_key_fails(log_key, verifier):
    note = sign_checkpoint(_checkpoint(), ORIGIN, log_key)
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(CryptoError, match="no signature"):
        open_checkpoint(note, parse_verifier_key(verifier_key(ORIGIN, stranger.public_key())))
    with pytest.raises(CryptoError, match="no signature"):
        open_checkpoint(note, parse_verifier_key(verifier_key("other.example/log", log_key.public_key())))
    # Signed by a stranger under the log's name: an unknown key, so no signature by ours.
    forged = sign_checkpoint(_checkpoint(), ORIGIN, stranger)
    with pytest.raises(CryptoError, match="no signature"):
        open_checkpoint(forged, verifier)


def test_unknown_signature_lines_are_ignored(log_key, verifier):
    cp = _checkpoint()
    note = sign_checkpoint(cp, ORIGIN, log_key)
    witness = Ed25519PrivateKey.generate()
    witness_line = sign_note(cp.body(), "witness.example/w1", witness).rpartition("\n\n")[2]
    long_unknown = f"{EM} pq.example/log {_b64(bytes([0x12, 0x34, 0x56, 0x78]) + bytes(2420))}\n"
    same_name_other_id = f"{EM} {ORIGIN} {_b64(bytes(4 + 64))}\n"
    for extra in (witness_line, long_unknown, same_name_other_id, GO_ENOCH_SIG):
        assert open_checkpoint(note + extra, verifier) == cp
        body, _, ours = note.rpartition("\n\n")
        assert open_checkpoint(body + "\n\n" + extra + ours, verifier) == cp  # unknown line first
    # The witness can open the cosigned note with its own key.
    cosigned = note + witness_line
    assert open_note(cosigned, parse_verifier_key(verifier_key("witness.example/w1", witness.public_key()))) == cp.body()


def test_a_bad_signature_by_our_key_rejects_the_note_even_beside_a_good_one(log_key, verifier):
    cp = _checkpoint()
    note = sign_checkpoint(cp, ORIGIN, log_key)
    kid = _independent_key_id(ORIGIN, log_key.public_key())
    bad_line = f"{EM} {ORIGIN} {base64.b64encode(kid + bytes(64)).decode()}\n"
    with pytest.raises(CryptoError, match="does not verify"):
        open_checkpoint(note + bad_line, verifier)
    with pytest.raises(CryptoError, match="more than one"):
        open_checkpoint(note + note.rpartition("\n\n")[2], verifier)


def test_malformed_notes_fail(log_key, verifier):
    cp = _checkpoint()
    note = sign_checkpoint(cp, ORIGIN, log_key)
    body, _, sig_line = note.rpartition("\n\n")
    bad = [
        note[:-1],  # no final newline
        note.replace("\n\n", "\n"),  # no blank line
        body + "\n\n" + sig_line.replace(EM, "-", 1),  # ASCII hyphen instead of em dash
        body + "\n\n" + sig_line.replace(" ", "", 1),  # no space after the dash
        body + "\n\n" + sig_line.replace(" ", "  ", 1),
        body + "\n\n" + sig_line + "\n",  # trailing blank line: no signature block
        body + "\n\n",
        note + f"{EM} unknown.example !!!notbase64\n",  # garbage, even by an unknown key
        note + f"{EM} unknown.example AAAA\n",  # too short for a key ID and a signature
        note + f"{EM} unknown.example\n",
        note + "not a signature line\n",
        note.replace("\n", "\r\n"),
        note + (f"{EM} k{{}} " + base64.b64encode(bytes(68)).decode() + "\n") * MAX_SIGNATURES,  # too many lines
        "",
    ]
    for text in bad:
        with pytest.raises(CryptoError):
            open_checkpoint(text, verifier)
    with pytest.raises(CryptoError):
        open_note(b"bytes are not a note", verifier)  # type: ignore[arg-type]


def test_signed_note_body_may_hold_blank_lines(log_key, verifier):
    text = "first paragraph\n\nsecond paragraph\n"
    note = sign_note(text, ORIGIN, log_key)
    assert open_note(note, verifier) == text
    with pytest.raises(CryptoError):  # ...but such a note is not a checkpoint
        open_checkpoint(note, verifier)


def test_sign_note_refuses_bad_input(log_key):
    for body, name in [
        ("no newline", ORIGIN),
        ("ctrl \x07\n", ORIGIN),
        ("ok\n", ""),
        ("ok\n", "has space"),
        ("ok\n", "has+plus"),
    ]:
        with pytest.raises(CryptoError):
            sign_note(body, name, log_key)

"""The naive baseline of SPEC §8, for `alliance bench` only.

"phe defaults": every report figure is its own python-paillier encryption with
fresh randomness (a new r^n for each, computed on the spot), no packing into
slots and no precomputed masks; the gateway multiplies slot by slot and the
querier decrypts every figure with phe's own private key. The answer is still
one fixed-width message per member (len(REPORT_FIELDS) ciphertexts of the
key's width, zeros included), so the protocol, the signatures, the audit log
and every check around them are the ones the bench measures for the real
crypto; only the encryption differs.

Selected by ``ALLIANCE_CRYPTO=naive`` in the environment of the gateway and
member processes that `alliance bench` starts for its baseline run, and by the
bench's querier; a service started any other way never reads naive answers.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from alliance import paillier
from alliance.errors import CryptoError, SlotOverflow
from alliance.paillier import PaillierPrivateKey, PaillierPublicKey

ENV = "ALLIANCE_CRYPTO"
NAIVE = "naive"


def enabled() -> bool:
    """True in a process the bench started for its naive baseline."""
    return os.environ.get(ENV, "") == NAIVE


def answer_width(pk: PaillierPublicKey, figures: int) -> int:
    return figures * pk.ciphertext_width


def encrypt_figures(pk: PaillierPublicKey, figures: Sequence[int]) -> bytes:
    """One phe encryption per figure, each with a fresh r^n (phe's default
    obfuscation), concatenated at the fixed ciphertext width."""
    phe_pk = paillier.to_phe_public_key(pk)
    out = []
    for i, value in enumerate(figures):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < paillier.FIGURE_BOUND:
            raise SlotOverflow(f"figure {i}: must be an int in [0, 2^64)")
        encrypted = phe_pk.encrypt(value)  # EncodedNumber with exponent 0 for an int; obfuscated with a fresh r
        out.append(paillier.encode_ciphertext(pk, encrypted.ciphertext(be_secure=True)))
    return b"".join(out)


def decode(pk: PaillierPublicKey, data: bytes, figures: int) -> list[int]:
    """The ciphertexts of a naive answer or aggregate, each checked as a
    unit of Z*_{n²}; refused unless exactly ``figures`` of them."""
    width = pk.ciphertext_width
    if len(data) != figures * width:
        raise CryptoError(f"a naive answer is {figures} ciphertexts of {width} bytes, got {len(data)} bytes")
    return [paillier.decode_ciphertext(pk, data[i * width:(i + 1) * width]) for i in range(figures)]


def add(pk: PaillierPublicKey, answers: Sequence[Sequence[int]]) -> list[int]:
    """Slot-wise homomorphic sum of decoded answers."""
    if not answers:
        raise CryptoError("nothing to add")
    return [paillier.add(pk, column) for column in zip(*answers)]


def encode(pk: PaillierPublicKey, ciphertexts: Sequence[int]) -> bytes:
    return b"".join(paillier.encode_ciphertext(pk, c) for c in ciphertexts)


def decrypt_figures(sk: PaillierPrivateKey, data: bytes, figures: int, summands: int) -> list[int]:
    """phe's decryption of every slot; each sum must be one that ``summands``
    figures below 2^64 can reach (as the packed form's unpack checks)."""
    import phe

    phe_sk: Any = paillier.to_phe_private_key(sk)
    phe_pk = phe_sk.public_key
    bound = summands * (paillier.FIGURE_BOUND - 1)
    sums = []
    for i, c in enumerate(decode(sk.public_key, data, figures)):
        value = phe_sk.decrypt(phe.EncryptedNumber(phe_pk, int(c), 0))
        if not isinstance(value, int) or not 0 <= value <= bound:
            raise SlotOverflow(f"naive slot {i} is not a sum of {summands} figures below 2^64")
        sums.append(value)
    return sums

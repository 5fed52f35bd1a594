"""ID canonicalisation and tokens (SPEC §3), against vectors checked by hand.

Check characters below are worked out in the comments, not taken from the code
under test. Resident ID: weights 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2, remainder
of the weighted sum mod 11 indexes "10X98765432" (0→1, 1→0, 2→X, 3→9, 4→8,
5→7, 6→6, 7→5, 8→4, 9→3, 10→2). USCC: values 0–9, A=10 B C D E F G H=17 J=18
K L M=21 N P Q R T U W X Y=30; weights 1 3 9 27 19 26 16 17 20 29 25 13 8 24
10 30 28; check value (31 − Σ mod 31) mod 31.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import random

import pytest

from alliance import identity
from alliance.errors import AllianceError, CryptoError, InvalidIdNumber, InvalidInput
from alliance.identity import canonical_id, masked_id, subject_token

TODAY = datetime.date(2025, 6, 30)

# 11010519491231002X — 1·7 + 1·9 + 0·10 + 1·5 + 0·8 + 5·4 + 1·2 + 9·1 + 4·6 + 9·3
# + 1·7 + 2·9 + 3·10 + 1·5 + 0·8 + 0·4 + 2·2 = 167; 167 mod 11 = 2 → 'X'.
BEIJING_X = "11010519491231002X"
# 110101199003071233 — 7+9+0+5+0+4+2+9+54+0+0+27+0+35+8+8+6 = 174; 174 mod 11 = 9 → '3'.
BEIJING_3 = "110101199003071233"
# 15-digit 320311770706001 → 32031119770706001 + check: 21+18+0+15+8+4+2+9+42+21+0
# +63+0+30+0+0+2 = 235; 235 mod 11 = 4 → '8'.
LEGACY_15 = "320311770706001"
LEGACY_UPGRADED = "320311197707060018"
# 91350100M000100Y43 — 9·1 + 1·3 + 3·9 + 5·27 + 0 + 1·26 + 0 + 0 + M(21)·20 + 0 + 0
# + 0 + 1·8 + 0 + 0 + Y(30)·30 + 4·28 = 1640; 1640 mod 31 = 28; 31 − 28 = 3 → '3'.
USCC_FUZHOU = "91350100M000100Y43"
# 91110108MA0000001D — 9 + 3 + 9 + 27 + 0 + 26 + 0 + 8·17 + M(21)·20 + A(10)·29 + 0·6
# + 1·28 = 948; 948 mod 31 = 18; 31 − 18 = 13 → 'D'.
USCC_BEIJING = "91110108MA0000001D"


def canon(id_type: str, raw: str) -> str:
    return canonical_id(id_type, raw, today=TODAY)


def refused(id_type: str, raw: str, today: datetime.date = TODAY) -> str:
    with pytest.raises(InvalidIdNumber) as info:
        canonical_id(id_type, raw, today=today)
    return str(info.value)


def test_constants() -> None:
    assert identity.ID_TYPES == ("RESIDENT_ID", "USCC")
    assert identity.SUBJECT_TYPE_FOR_ID_TYPE == {"RESIDENT_ID": "PERSON", "USCC": "ORG"}


def test_normalize_text_folds_full_width_and_strips() -> None:
    assert identity.normalize_text("\u3000ＡＢＣ１２３\u3000 ") == "ABC123"


# --- check characters ------------------------------------------------------


@pytest.mark.parametrize(
    ("first17", "check"),
    [
        ("11010519491231002", "X"),
        ("11010119900307123", "3"),
        ("32031119770706001", "8"),
        # 1+1+0+1+0+1+2+0+9+9+0+1+0+1+1+2+3 weighted: 7+9+5+4+4+54+27+9+5+8+8+6 = 146;
        # 146 mod 11 = 3 → '9'.
        ("11010120990101123", "9"),
    ],
)
def test_resident_id_check_char_hand_vectors(first17: str, check: str) -> None:
    assert identity.resident_id_check_char(first17) == check


def test_resident_id_check_char_matches_the_weight_table() -> None:
    """The implementation uses a base-13 shortcut; compare it with the
    standard's weighted sum on many random inputs."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    rng = random.Random(11643)
    for _ in range(5000):
        first17 = "".join(rng.choice("0123456789") for _ in range(17))
        total = sum(int(d) * w for d, w in zip(first17, weights))
        assert identity.resident_id_check_char(first17) == "10X98765432"[total % 11]


def test_resident_id_check_char_needs_17_digits() -> None:
    with pytest.raises(InvalidIdNumber):
        identity.resident_id_check_char("1101051949123100")
    with pytest.raises(InvalidIdNumber):
        identity.resident_id_check_char("1101051949123100A")


@pytest.mark.parametrize(("first17", "check"), [("91350100M000100Y4", "3"), ("91110108MA0000001", "D")])
def test_uscc_check_char_hand_vectors(first17: str, check: str) -> None:
    assert identity.uscc_check_char(first17) == check


def test_uscc_check_char_refuses_letters_outside_the_alphabet() -> None:
    with pytest.raises(InvalidIdNumber, match="'O' is not allowed"):
        identity.uscc_check_char("91350100MO00100Y4")


# --- resident IDs ----------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        BEIJING_X,
        "11010519491231002x",  # lower-case x
        "１１０１０５１９４９１２３１００２Ｘ",  # full-width digits and X
        "１１０１０５１９４９１２３１００２ｘ",  # full-width lower-case x
        "  11010519491231002X\t",  # padded
        "\u300011010519491231002X\u3000",  # ideographic spaces
        "110105 19491231 002X",  # grouped
        "110105491231002",  # 15-digit legacy: 110105 + 19 + 491231 + 002 + check X
    ],
)
def test_resident_id_spellings_canonicalise_to_one_form(spelling: str) -> None:
    assert canon("RESIDENT_ID", spelling) == BEIJING_X


def test_legacy_15_digit_number_is_upgraded() -> None:
    assert canon("RESIDENT_ID", LEGACY_15) == LEGACY_UPGRADED
    assert canon("RESIDENT_ID", LEGACY_UPGRADED) == LEGACY_UPGRADED


def test_digit_check_character_is_accepted() -> None:
    assert canon("RESIDENT_ID", BEIJING_3) == BEIJING_3


def test_wrong_check_character_names_the_expected_one() -> None:
    # Hand-computed: the correct check characters are '3' and 'X'. The message
    # must not reveal them, or a clerk "fixes" a mistyped number into a valid,
    # wrong one.
    assert refused("RESIDENT_ID", "110101199003071234") == "check character '4' does not match the other 17 characters (mistyped number?)"
    assert refused("RESIDENT_ID", "110105194912310029") == "check character '9' does not match the other 17 characters (mistyped number?)"
    assert "'3'" not in refused("RESIDENT_ID", "110101199003071234")


def test_birth_date_must_be_real() -> None:
    # 11010119900230123: 7+9+0+5+0+4+2+9+54+0+0+18+30+0+8+8+6 = 160; 160 mod 11 = 6 → '6',
    # so only the date is wrong.
    assert refused("RESIDENT_ID", "110101199002301236") == "birth date 19900230 is not a real date"


def test_birth_date_must_not_be_in_the_future() -> None:
    # 110101209901011239 has a correct check character (see the vector above).
    assert refused("RESIDENT_ID", "110101209901011239") == "birth date 20990101 is in the future"
    born_today = "110101" + TODAY.strftime("%Y%m%d") + "123"
    total = sum(int(d) * w for d, w in zip(born_today, (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)))
    valid = born_today + "10X98765432"[total % 11]
    assert canon("RESIDENT_ID", valid) == valid
    assert "is in the future" in refused("RESIDENT_ID", valid, today=TODAY - datetime.timedelta(days=1))


def test_birth_date_before_1900_is_refused() -> None:
    # 44052418800101001: 28+36+0+25+16+16+2+8+48+0+0+9+0+5+0+0+2 = 195; 195 mod 11 = 8 → '4'.
    assert refused("RESIDENT_ID", "440524188001010014") == "birth date 18800101 is before 1900-01-01"


def test_date_and_check_problems_are_reported_together() -> None:
    message = refused("RESIDENT_ID", "11010119900230123X")
    assert "birth date 19900230 is not a real date" in message
    assert "check character 'X' does not match" in message and "'6'" not in message


def test_legacy_number_with_impossible_date() -> None:
    assert refused("RESIDENT_ID", "110101900230123") == "birth date 19900230 is not a real date"


@pytest.mark.parametrize(("raw", "length"), [("11010519491231002", 17), ("11010519491231002X1", 19), ("1101051949123", 13)])
def test_wrong_length_is_refused(raw: str, length: int) -> None:
    assert refused("RESIDENT_ID", raw) == f"must be 18 characters (or 15 digits for a legacy resident ID), got {length}"


def test_non_digit_in_the_first_17_is_named() -> None:
    assert refused("RESIDENT_ID", "1101051949A231002X") == (
        "the first 17 characters must be digits; character 'A' at position 11 is not a digit"
    )


def test_legacy_number_must_be_all_digits() -> None:
    assert "character 'X' at position 15 is not a digit" in refused("RESIDENT_ID", "11010549123100X")


def test_other_scripts_digits_are_not_digits() -> None:
    # Arabic-Indic digits survive NFKC and str.isdigit() accepts them.
    assert "is not a digit" in refused("RESIDENT_ID", "\u0661" + BEIJING_X[1:])


def test_empty_is_refused() -> None:
    assert refused("RESIDENT_ID", "   ") == "is empty"


def test_unknown_id_type() -> None:
    assert refused("PASSPORT", "E12345678").startswith("unknown id_type 'PASSPORT'")


def test_default_today_is_used_without_argument() -> None:
    assert canonical_id("RESIDENT_ID", BEIJING_X) == BEIJING_X
    with pytest.raises(InvalidIdNumber, match="in the future"):
        canonical_id("RESIDENT_ID", "110101209901011239")


def test_errors_are_typed_invalid_input_with_exit_code_3() -> None:
    with pytest.raises(InvalidInput) as info:
        canon("RESIDENT_ID", "x")
    assert isinstance(info.value, AllianceError) and info.value.exit_code == 3


# --- USCC ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        (USCC_FUZHOU, USCC_FUZHOU),
        ("91350100m000100y43", USCC_FUZHOU),
        ("９１３５０１００Ｍ０００１００Ｙ４３", USCC_FUZHOU),
        (" 91 350100 M000100Y4 3 ", USCC_FUZHOU),
        ("91110108ma0000001d", USCC_BEIJING),
    ],
)
def test_uscc_spellings(spelling: str, canonical: str) -> None:
    assert canon("USCC", spelling) == canonical


@pytest.mark.parametrize("letter", ["I", "O", "S", "V", "Z"])
def test_uscc_letters_outside_the_alphabet(letter: str) -> None:
    assert refused("USCC", USCC_FUZHOU[:8] + letter + USCC_FUZHOU[9:]) == f"character {letter!r} is not allowed in a USCC"


def test_uscc_wrong_check_character() -> None:
    assert refused("USCC", "91350100M000100Y44") == "check character '4' does not match the other 17 characters (mistyped code?)"


def test_uscc_wrong_length() -> None:
    assert refused("USCC", USCC_FUZHOU[:-1]) == "must be 18 characters, got 17"


def test_resident_id_is_not_a_uscc() -> None:
    # Digits are in the USCC alphabet but the check character is not.
    assert "check character" in refused("USCC", BEIJING_X)


# --- tokens and masking ----------------------------------------------------

KEY = bytes(range(32))


def test_token_is_hmac_sha256_of_the_prefixed_canonical_id() -> None:
    message = b"UDS1|RESIDENT_ID|" + BEIJING_X.encode()
    assert subject_token(KEY, "RESIDENT_ID", BEIJING_X) == hmac.new(KEY, message, hashlib.sha256).digest()


def test_token_fixed_vectors_computed_with_openssl() -> None:
    # printf 'UDS1|RESIDENT_ID|11010519491231002X' | openssl dgst -sha256 -mac HMAC -macopt hexkey:0001…1f
    assert subject_token(KEY, "RESIDENT_ID", BEIJING_X).hex() == (
        "084179afc42b4e3b5031bdd3f67fd4d31a2c869704b68dfca7ee4b3fc127eb6e"
    )
    assert subject_token(KEY, "USCC", USCC_FUZHOU).hex() == (
        "e54c715b585f97f107bf37d1e5d7f2e771312f25bea333de9e42e7e0d675f045"
    )


def test_token_is_32_bytes_and_separates_id_types_and_keys() -> None:
    token = subject_token(KEY, "RESIDENT_ID", BEIJING_X)
    assert len(token) == 32
    assert token != subject_token(bytes(32), "RESIDENT_ID", BEIJING_X)


def test_every_spelling_gives_the_same_token() -> None:
    tokens = {subject_token(KEY, "RESIDENT_ID", canon("RESIDENT_ID", s))
              for s in (BEIJING_X, "11010519491231002x", "110105491231002", "１１０１０５１９４９１２３１００２ｘ")}
    assert len(tokens) == 1


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(33), "k" * 32])
def test_token_needs_a_32_byte_key(key: object) -> None:
    with pytest.raises(CryptoError, match="32 bytes"):
        subject_token(key, "RESIDENT_ID", BEIJING_X)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("id_type", "not_canonical"),
    [("RESIDENT_ID", "11010519491231002x"), ("RESIDENT_ID", "110105491231002"), ("RESIDENT_ID", " " + BEIJING_X),
     ("RESIDENT_ID", "110105194912310029"), ("USCC", "91350100m000100y43"), ("USCC", BEIJING_X)],
)
def test_token_refuses_a_number_that_is_not_canonical(id_type: str, not_canonical: str) -> None:
    """A raw spelling would give a token no other member derives."""
    with pytest.raises(InvalidIdNumber, match="canonical_id"):
        subject_token(KEY, id_type, not_canonical)


def test_token_refuses_an_unknown_id_type() -> None:
    with pytest.raises(InvalidInput, match="PASSPORT"):
        subject_token(KEY, "PASSPORT", BEIJING_X)


def test_masked_id() -> None:
    assert masked_id("11010519491231123X") == "110105********123X"
    assert masked_id(USCC_FUZHOU) == "913501********0Y43"
    with pytest.raises(InvalidIdNumber):
        masked_id("110105491231002")

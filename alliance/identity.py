"""Identity canonicalisation and keyed subject tokens (SPEC §3).

Two members only find the same borrower if they derive the same token, and
they only derive the same token if they agree on one spelling of the ID number.
So every accepted spelling (lower-case x, full-width digits, spaces, the
15-digit legacy resident ID) is reduced to exactly one canonical 18-character
form here, and anything that is not a valid number is refused with a message
the person fixing the file can act on. Error messages never echo the number
itself: they end up in logs and reject files.
"""
from __future__ import annotations

import datetime
import hmac
import unicodedata
from zoneinfo import ZoneInfo

from alliance.errors import CryptoError, InvalidIdNumber, InvalidInput

ID_TYPES = ("RESIDENT_ID", "USCC")
SUBJECT_TYPE_FOR_ID_TYPE = {"RESIDENT_ID": "PERSON", "USCC": "ORG"}

MATCHING_KEY_SIZE = 32
TOKEN_PREFIX = b"UDS1|"

RESIDENT_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
RESIDENT_ID_CHECK_CHARS = "10X98765432"
EARLIEST_BIRTH_DATE = datetime.date(1900, 1, 1)

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
USCC_VALUES = {char: value for value, char in enumerate(USCC_ALPHABET)}
USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))

_SHANGHAI = ZoneInfo("Asia/Shanghai")
_DIGITS = frozenset("0123456789")


def shanghai_today() -> datetime.date:
    """Today's date in Asia/Shanghai: the alliance's calendar, whatever the
    host's time zone, so a birth date is never "in the future" on one member
    and valid on another."""
    return datetime.datetime.now(_SHANGHAI).date()


def normalize_text(s: str) -> str:
    """NFKC then strip: full-width digits, letters and spaces become ASCII."""
    return unicodedata.normalize("NFKC", s).strip()


def resident_id_check_char(first17: str) -> str:
    """GB 11643 check character: ISO 7064 MOD 11-2 over the first 17 digits."""
    if len(first17) != 17 or not _is_ascii_digits(first17):
        raise InvalidIdNumber("a resident ID check character needs exactly 17 digits")
    return _mod11_2(first17)


def _mod11_2(digits17: str) -> str:
    # The weights are 2^(17-i) mod 11 and 13 ≡ 2 (mod 11), so reading the digits
    # as a base-13 numeral gives half the weighted sum, modulo 11, at C speed.
    # tests/test_identity.py checks this against the explicit weight table.
    return RESIDENT_ID_CHECK_CHARS[2 * int(digits17, 13) % 11]


def uscc_check_char(first17: str) -> str:
    """GB 32100 check character: weights 3^(i-1) mod 31, check (31 - Σ mod 31) mod 31."""
    if len(first17) != 17:
        raise InvalidIdNumber("a USCC check character needs exactly 17 characters")
    try:
        total = sum(USCC_VALUES[c] * w for c, w in zip(first17, USCC_WEIGHTS))
    except KeyError as exc:
        raise InvalidIdNumber(f"character {exc.args[0]!r} is not allowed in a USCC") from None
    return USCC_ALPHABET[(31 - total % 31) % 31]


def canonical_id(id_type: str, raw: str, *, today: datetime.date | None = None) -> str:
    """The one canonical spelling of an ID number, or InvalidIdNumber saying
    what is wrong. ``today`` bounds resident birth dates (default: today in
    Asia/Shanghai); callers validating many rows pass it once."""
    today = today or shanghai_today()
    if id_type == "RESIDENT_ID" and len(raw) == 18 and raw.isascii():
        # Fast path for the usual case, an already canonical number whose birth
        # date has been seen before: one import validates millions of them.
        first17 = raw[:17]
        birth = _BIRTH_DATES.get(raw[6:14])
        if (birth is not None and birth <= today and first17.isdigit()
                and raw[17] == RESIDENT_ID_CHECK_CHARS[2 * int(first17, 13) % 11]):  # see _mod11_2
            return raw
    if id_type not in SUBJECT_TYPE_FOR_ID_TYPE:
        raise InvalidIdNumber(f"unknown id_type {id_type!r}; expected one of {', '.join(ID_TYPES)}")
    text = _compact(raw)
    if not text:
        raise InvalidIdNumber("is empty")
    if id_type == "USCC":
        return _canonical_uscc(text)
    return _canonical_resident_id(text, today)


def subject_token(matching_key: bytes, id_type: str, canonical: str) -> bytes:
    """HMAC-SHA256(matching key, "UDS1|" + id_type + "|" + canonical id).

    ``canonical`` must already be canonical: a raw spelling would yield a token
    no other member derives, silently hiding the borrower's debts. So its form
    (length, alphabet, check character) is verified here; birth dates are not,
    as they depend on the day the number was canonicalised."""
    if not isinstance(matching_key, bytes) or len(matching_key) != MATCHING_KEY_SIZE:
        raise CryptoError(f"the matching key must be {MATCHING_KEY_SIZE} bytes")
    _require_canonical_form(id_type, canonical)
    message = TOKEN_PREFIX + id_type.encode("ascii") + b"|" + canonical.encode("ascii")
    return hmac.digest(matching_key, message, "sha256")


def masked_id(canonical: str) -> str:
    """First 6, eight '*', last 4: enough for a member's operator to recognise a
    record, not enough to recover the number (e.g. ``110105********123X``)."""
    if len(canonical) != 18:
        raise InvalidIdNumber(f"only a canonical 18-character ID can be masked, got {len(canonical)} characters")
    return canonical[:6] + "********" + canonical[14:]


def _compact(raw: str) -> str:
    """NFKC, then drop all whitespace (leading, trailing and the spaces of a
    grouped spelling such as ``110105 19491231 002X``), then upper-case."""
    text = raw if raw.isascii() else unicodedata.normalize("NFKC", raw)
    if not (len(text) == 18 and text.isalnum()):
        text = "".join(text.split())
    return text.upper()


def _canonical_resident_id(text: str, today: datetime.date) -> str:
    if len(text) == 15:
        if not _is_ascii_digits(text):
            raise InvalidIdNumber(f"a 15-character legacy resident ID must be all digits; {_non_digit(text)}")
        first17 = text[:6] + "19" + text[6:]
        _check_birth_date(first17[6:14], today)
        return first17 + _mod11_2(first17)
    if len(text) != 18:
        raise InvalidIdNumber(f"must be 18 characters (or 15 digits for a legacy resident ID), got {len(text)}")
    first17, given = text[:17], text[17]
    if not _is_ascii_digits(first17):
        raise InvalidIdNumber(f"the first 17 characters must be digits; {_non_digit(first17)}")
    problems = []
    birth_problem = _birth_date_problem(first17[6:14], today)
    if birth_problem:
        problems.append(birth_problem)
    expected = _mod11_2(first17)
    if given != expected:
        problems.append(f"check character {given!r} does not match the other 17 characters (mistyped number?)")
    if problems:
        raise InvalidIdNumber("; ".join(problems))
    return text


def _canonical_uscc(text: str) -> str:
    if len(text) != 18:
        raise InvalidIdNumber(f"must be 18 characters, got {len(text)}")
    for char in text:
        if char not in USCC_VALUES:
            raise InvalidIdNumber(f"character {char!r} is not allowed in a USCC")
    expected = uscc_check_char(text[:17])
    if text[17] != expected:
        raise InvalidIdNumber(f"check character {text[17]!r} does not match the other 17 characters (mistyped code?)")
    return text


def _check_birth_date(yyyymmdd: str, today: datetime.date) -> None:
    problem = _birth_date_problem(yyyymmdd, today)
    if problem:
        raise InvalidIdNumber(problem)


def _birth_date_problem(yyyymmdd: str, today: datetime.date) -> str | None:
    """Why the 8 birth-date digits are unacceptable, or None."""
    birth = _BIRTH_DATES.get(yyyymmdd)
    if birth is None:
        try:
            birth = datetime.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
        except ValueError:
            return f"birth date {yyyymmdd} is not a real date"
        if EARLIEST_BIRTH_DATE <= birth <= today:
            _BIRTH_DATES[yyyymmdd] = birth
    if birth > today:
        return f"birth date {yyyymmdd} is in the future"
    if birth < EARLIEST_BIRTH_DATE:
        return f"birth date {yyyymmdd} is before {EARLIEST_BIRTH_DATE.isoformat()}"
    return None


# Building a date object is a third of the cost of validating a resident ID and
# a loan book repeats birth dates a lot. Only plausible birth dates are cached
# (about 46,000 since 1900), so hostile input cannot grow this without bound.
_BIRTH_DATES: dict[str, datetime.date] = {}


def _require_canonical_form(id_type: str, canonical: str) -> None:
    if id_type not in SUBJECT_TYPE_FOR_ID_TYPE:
        raise InvalidInput(f"unknown id_type {id_type!r}; expected one of {', '.join(ID_TYPES)}")
    if len(canonical) == 18:
        if id_type == "USCC":
            if all(c in USCC_VALUES for c in canonical) and uscc_check_char(canonical[:17]) == canonical[17]:
                return
        elif _is_ascii_digits(canonical[:17]) and _mod11_2(canonical[:17]) == canonical[17]:
            return
    raise InvalidIdNumber(f"not a canonical {id_type}: pass the number through canonical_id() first")


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit() alone accepts other scripts' digits (e.g. Arabic-Indic).
    return text.isascii() and text.isdigit()


def _non_digit(text: str) -> str:
    """Names the first non-digit of ``text``, which must contain one."""
    position, char = next((i, c) for i, c in enumerate(text, start=1) if c not in _DIGITS)
    return f"character {char!r} at position {position} is not a digit"

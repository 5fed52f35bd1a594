"""Typed errors. Each carries the exit status of SPEC §7 so the CLI can map any
library failure to one line on stderr and the right code, and each message is
written for the person who has to act on it."""
from __future__ import annotations


class AllianceError(Exception):
    """Base class. ``exit_code`` is the SPEC §7 exit status."""

    exit_code = 1


class UsageError(AllianceError):
    exit_code = 2


class InvalidInput(AllianceError):
    """Bad data from the user: a malformed row, an invalid ID number, a bad file."""

    exit_code = 3


class InvalidIdNumber(InvalidInput):
    pass


class Refused(AllianceError):
    """Authorisation, consent, purpose, quota, status: the alliance said no."""

    exit_code = 4

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


class Unreachable(AllianceError):
    """The alliance could not be reached, or too few members answered.
    ``reason`` is the gateway's refusal reason when it answered (e.g.
    ``answer_set_changed``, SPEC §5.3), else ``unreachable``."""

    exit_code = 5

    def __init__(self, message: str, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.reason = reason


class CryptoError(AllianceError):
    """A signature, ciphertext, key or proof failed to verify."""

    exit_code = 1


class SlotOverflow(CryptoError):
    """A packed Paillier slot is out of range: a figure ≥ 2^64 or a carry."""


class VerificationFailed(AllianceError):
    """An audit check failed. ``entry`` names the first bad log entry, if any."""

    exit_code = 1

    def __init__(self, message: str, entry: int | None = None) -> None:
        super().__init__(message)
        self.entry = entry

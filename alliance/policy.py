"""The alliance policy the admin sets and every member can read (SPEC §9,
§10): data freshness for reciprocity, whether portfolio monitoring is on,
and its own daily quota. Every change is a logged `policy_changed`
membership entry stating the whole policy after it, so each refusal that
depends on it can be re-derived from the log."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from alliance.errors import UsageError

MONITORING_PURPOSE = "POST_LOAN_MONITORING"


@dataclass(frozen=True)
class Policy:
    max_book_age_days: int = 7  # §10: a member whose newest loan update is older may not query
    monitoring: bool = False  # §9: portfolio monitoring is off unless the alliance enables it
    monitoring_quota: int = 1000  # §9: POST_LOAN_MONITORING queries per member per day, apart from the daily quota

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Policy":
        known = {f.name for f in fields(cls)}
        unknown = set(doc) - known
        if unknown:
            raise UsageError(f"unknown policy setting(s): {', '.join(sorted(unknown))}")
        policy = cls(**doc)
        policy.check()
        return policy

    def check(self) -> None:
        if type(self.max_book_age_days) is not int or not 1 <= self.max_book_age_days <= 3650:
            raise UsageError("max_book_age_days must be an integer from 1 to 3650")
        if type(self.monitoring) is not bool:
            raise UsageError("monitoring must be on or off")
        if type(self.monitoring_quota) is not int or not 0 <= self.monitoring_quota <= 10_000_000:
            raise UsageError("monitoring_quota must be an integer from 0 to 10,000,000")

    def with_setting(self, key: str, text: str) -> "Policy":
        """``alliance admin policy set KEY VALUE``: the policy with one setting changed."""
        if key == "monitoring":
            if text.lower() not in ("on", "off", "true", "false"):
                raise UsageError("monitoring takes on or off")
            value: Any = text.lower() in ("on", "true")
        elif key in ("max_book_age_days", "monitoring_quota"):
            if not text.isdigit():
                raise UsageError(f"{key} takes a whole number, not {text!r}")
            value = int(text)
        else:
            raise UsageError(f"unknown policy setting {key!r}; settings: max_book_age_days, monitoring, monitoring_quota")
        policy = replace(self, **{key: value})
        policy.check()
        return policy

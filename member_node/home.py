"""Files of a member (or auditor) home. Private keys are created here, on the
member's side, with mode 0600, and never leave it: the join request carries
public keys only, and the matching key arrives encrypted to this member."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from alliance.errors import UsageError
from alliance_gateway.home import read_json, resolve_db_url, write_json

MEMBER_CONFIG = "member.json"


@dataclass
class MemberConfig:
    member_id: str
    name: str
    role: str  # member | auditor
    endpoint: str  # host:port the gateway calls (members only)
    listen: str
    gateway: str  # host:port of the gateway
    db_url: str | None = None


class MemberHome:
    def __init__(self, path: Path) -> None:
        self.path = path

    tls_key = property(lambda self: self.path / "tls.key")
    tls_cert = property(lambda self: self.path / "tls.crt")
    signing_key = property(lambda self: self.path / "ed25519.key")
    x25519_key = property(lambda self: self.path / "x25519.key")
    paillier_key = property(lambda self: self.path / "paillier.key")
    join_request = property(lambda self: self.path / "join-request.bin")
    credential = property(lambda self: self.path / "credential.bin")
    ca_cert = property(lambda self: self.path / "ca.crt")
    log_verifier = property(lambda self: self.path / "log-verifier.txt")
    matching_key = property(lambda self: self.path / "matching-key.json")
    checkpoint = property(lambda self: self.path / "checkpoint.txt")
    default_db = property(lambda self: self.path / "member.db")
    # Keys of a rotation started by `member rotate-keys`, until `member join` installs them.
    pending_rotation = property(lambda self: MemberHome(self.path / "rotation"))

    def config(self) -> MemberConfig:
        return MemberConfig(**read_json(self.path / MEMBER_CONFIG, "member home"))

    def write_config(self, cfg: MemberConfig) -> None:
        write_json(self.path / MEMBER_CONFIG, asdict(cfg))

    def db_url(self, explicit: str | None = None) -> str:
        return resolve_db_url(explicit, self.config().db_url, self.default_db)

    def is_joined(self) -> bool:
        return self.credential.exists() and self.tls_cert.exists()

    def require_joined(self) -> None:
        """A usage error (exit 2), not a missing-file crash, before the credential is needed."""
        self.config()  # "not an initialised member home" first
        if not self.is_joined():
            raise UsageError(f"{self.path} has not joined the alliance yet (run `alliance member join`)")

    def require_matching_key(self) -> None:
        if not self.matching_key.exists():
            raise UsageError(f"{self.path} holds no matching key (founding member: `alliance member matching-key create`; "
                             "newcomer: `alliance member matching-key install`)")

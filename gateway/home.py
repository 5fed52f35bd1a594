"""Files of the gateway home and the admin home.

The admin home holds the alliance CA private key; the gateway home holds only
what `alliance gateway serve` needs: its TLS key and certificate, the CA
certificate, the log signing key and its configuration. The CA key never
enters the gateway home."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from alliance import db
from alliance.errors import InvalidInput, UsageError

GATEWAY_CONFIG = "gateway.json"
ADMIN_CONFIG = "admin.json"


@dataclass
class GatewayConfig:
    listen: str
    db_url: str
    log_origin: str
    log_key_name: str
    k_min: int = 2
    deadline_ms: int = 2000
    default_daily_quota: int = 10_000
    registry_refresh_ms: int = 1000
    witness_interval_s: float = 10.0  # SPEC §6.1: how often a witness checkpoint is cut


@dataclass
class AdminConfig:
    alliance_name: str
    gateway_home: str
    db_url: str
    gateway_endpoint: str
    default_daily_quota: int
    local_names: bool = False  # local/demo alliance: loopback names in every certificate (SPEC §5.2)


class GatewayHome:
    def __init__(self, path: Path) -> None:
        self.path = path

    ca_cert = property(lambda self: self.path / "ca.crt")
    tls_key = property(lambda self: self.path / "gateway.key")
    tls_cert = property(lambda self: self.path / "gateway.crt")
    log_key = property(lambda self: self.path / "log-signing.key")
    log_verifier = property(lambda self: self.path / "log-verifier.txt")
    default_db = property(lambda self: self.path / "gateway.db")

    def config(self) -> GatewayConfig:
        path = self.path / GATEWAY_CONFIG
        try:
            cfg = GatewayConfig(**read_json(path, "gateway home"))
        except TypeError as exc:
            raise InvalidInput(f"{path}: unexpected or missing setting ({exc})") from None
        # SPEC §1 property 3, §5.4: a sum over one member is that member's figures.
        if type(cfg.k_min) is not int or cfg.k_min < 2:
            raise InvalidInput(f"{path}: k_min is {cfg.k_min!r}; it must be an integer of at least 2 "
                               "(a report over one member would disclose that member's figures)")
        return cfg

    def write_config(self, cfg: GatewayConfig) -> None:
        write_json(self.path / GATEWAY_CONFIG, asdict(cfg))


class AdminHome:
    def __init__(self, path: Path) -> None:
        self.path = path

    ca_key = property(lambda self: self.path / "ca.key")
    ca_cert = property(lambda self: self.path / "ca.crt")

    def config(self) -> AdminConfig:
        return AdminConfig(**read_json(self.path / ADMIN_CONFIG, "admin home"))

    def write_config(self, cfg: AdminConfig) -> None:
        write_json(self.path / ADMIN_CONFIG, asdict(cfg))


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path.parent} is not an initialised {what} ({path.name} is missing)") from None
    except ValueError as exc:
        raise UsageError(f"{path}: corrupt configuration ({exc})") from None


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a crash never leaves half a configuration file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def resolve_db_url(explicit: str | None, configured: str | None, default_path: Path) -> str:
    return explicit or configured or db.sqlite_url(default_path)

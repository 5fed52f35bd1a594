"""A whole alliance on one machine, built through the real onboarding path
(admin init → member keygen → admin member add → member join → matching-key
create / share / install) with the gateway and every member node as separate
processes over loopback mutual TLS. Used by `alliance demo`, `alliance bench`
and the end-to-end tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alliance import matching_key, pki, transport
from alliance.errors import Unreachable, UsageError
from alliance_gateway import admin as admin_ops
from alliance_gateway.home import GatewayHome
from alliance_member import onboarding
from alliance_member.gateway_client import GATEWAY_ENV

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class LocalMember:
    member_id: str
    home: Path
    endpoint: str
    db_url: str | None = None
    process: subprocess.Popen | None = None


@dataclass
class LocalAlliance:
    root: Path
    member_ids: list[str]
    gateway_db_url: str | None = None
    member_db_urls: dict[str, str] = field(default_factory=dict)
    deadline_ms: int = 2000
    default_quota: int = 100_000
    with_auditor: bool = True
    log_dir: Path | None = None
    witness_interval_s: float = 1.0  # SPEC §6.1 cut interval (10 s in production); members poll as often
    gateway_replicas: int = 1  # SPEC §12: more than one `gateway serve` on one PostgreSQL database

    def __post_init__(self) -> None:
        if self.gateway_replicas < 1:
            raise UsageError(f"gateway_replicas is {self.gateway_replicas}; at least 1 gateway is needed")
        if self.gateway_replicas > 1 and not (self.gateway_db_url or "").startswith("postgresql"):
            raise UsageError("gateway replicas share one PostgreSQL database (SPEC §12): give a postgresql:// gateway_db_url")
        self.admin_home = self.root / "admin"
        self.gateway_home = self.root / "gateway"
        self.auditor_home: Path | None = self.root / "auditor" if self.with_auditor else None
        self.gateway_endpoint = f"{HOST}:{free_port()}"
        self.members = {
            mid: LocalMember(mid, self.root / "members" / mid, f"{HOST}:{free_port()}", self.member_db_urls.get(mid))
            for mid in self.member_ids
        }
        self.gateway_process: subprocess.Popen | None = None
        # replicas 2, 3, ...: same gateway home, own listen port (index 0 is gateway_endpoint / gateway_process)
        self.replica_endpoints = [f"{HOST}:{free_port()}" for _ in range(self.gateway_replicas - 1)]
        self.replica_processes: list[subprocess.Popen | None] = [None] * (self.gateway_replicas - 1)
        self.check_value = ""

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> "LocalAlliance":
        try:
            admin_ops.init_alliance(
                self.admin_home, self.gateway_home, alliance_name="demo.credit-alliance", listen=self.gateway_endpoint,
                gateway_endpoint=self.gateway_endpoint, hosts=("localhost", HOST), db_url=self.gateway_db_url, local=True,
                default_quota=self.default_quota, deadline_ms=self.deadline_ms,
            )
            ghome = GatewayHome(self.gateway_home)
            cfg = ghome.config()
            cfg.witness_interval_s = self.witness_interval_s
            ghome.write_config(cfg)
            self.gateway_process = self._spawn("gateway", ["gateway", "serve", "--home", str(self.gateway_home)])
            self.wait_serving(self.gateway_endpoint, gateway=True)
            for i in range(1, self.gateway_replicas):
                self.start_gateway(i)
            registry = admin_ops.Admin(self.admin_home)
            fingerprints = {}
            for m in self.members.values():
                result = onboarding.keygen(
                    m.home, member_id=m.member_id, name=f"{m.member_id} lending platform", role="member",
                    endpoint=m.endpoint, listen=m.endpoint, gateway=self.gateway_endpoint, db_url=m.db_url,
                )
                fingerprints[m.member_id] = result.fingerprint
                onboarding.join(m.home, registry.add(result.join_request.read_bytes(), expected_role="member"))
            if self.auditor_home is not None:
                result = onboarding.keygen(
                    self.auditor_home, member_id="auditor", name="alliance auditor", role="auditor",
                    endpoint="", listen="", gateway=self.gateway_endpoint,
                )
                onboarding.join(self.auditor_home, registry.add(result.join_request.read_bytes(), expected_role="auditor"))
            self._hand_over_matching_key(fingerprints)
            for m in self.members.values():
                m.process = self._spawn(m.member_id, ["member", "serve", "--home", str(m.home)])
            for m in self.members.values():
                self.wait_serving(m.endpoint)
            self.wait_witnessed()
        except BaseException:
            self.stop()
            raise
        return self

    def _hand_over_matching_key(self, fingerprints: dict[str, str]) -> None:
        """The founding member creates the key and logs it; it is shared with
        each newcomer through the gateway relay after the founder's logged
        sponsorship (SPEC §5.1), fingerprints and check value confirmed as
        they would be out of band. Every member then trusts every other:
        newcomers through their root (the founder) and its sponsorships."""
        founder, *others = self.members.values()
        mk = onboarding.create_matching_key(founder.home)
        onboarding.announce_matching_key(founder.home)  # logged: matching_key_created
        self.check_value = matching_key.format_check_value(matching_key.check_value(mk.key))
        for m in others:
            onboarding.share_matching_key(founder.home, recipient_id=m.member_id, recipient_fingerprint=fingerprints[m.member_id])
            onboarding.install_matching_key(
                m.home, sender_id=founder.member_id, sender_fingerprint=fingerprints[founder.member_id], check_value=self.check_value
            )

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log_dir = self.log_dir or self.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = (log_dir / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ALLIANCE_WITNESS_POLL_S": str(self.witness_interval_s)}
        if self.gateway_replicas > 1:  # member nodes (feed, witness) fail over between replicas like any client
            env[GATEWAY_ENV] = ",".join(self.gateway_endpoints)
        return subprocess.Popen(
            [sys.executable, "-m", "alliance_cli.main", "-v", *args], stdout=log_file, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )

    def wait_serving(self, endpoint: str, *, gateway: bool = False, timeout_s: float = 30.0) -> None:
        """Poll the gRPC health service over mutual TLS until it says SERVING.
        Uses the gateway's certificate: member nodes answer the gateway role
        only (SPEC §5.2), and the gateway is checked for its role as any
        client would."""
        g = self.gateway_home
        creds = (pki.read_private_file(g / "gateway.key"), (g / "gateway.crt").read_bytes(), (g / "ca.crt").read_bytes())
        channel = transport.gateway_channel(endpoint, *creds) if gateway else transport.secure_channel(endpoint, *creds)
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
            raise Unreachable(f"{endpoint} did not start serving within {timeout_s:.0f}s (see {self.root / 'logs'})")
        finally:
            channel.close()

    def wait_witnessed(self, timeout_s: float = 60.0) -> None:
        """Wait until every member's membership feed keeps a checkpoint
        cosigned by a witness quorum that covers everything it held when it
        started serving (SPEC §6.1: trust in a sponsored peer rests on it,
        so a query right after start-up is not refused `not_witnessed`).
        Takes about one witness interval plus a feed refresh."""
        from sqlalchemy import select

        from alliance import db
        from alliance_member import feed as feed_mod
        from alliance_member.home import MemberHome

        engines = {m.member_id: db.make_engine(MemberHome(m.home).db_url(m.db_url)) for m in self.members.values()}
        targets: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                behind = []
                for mid, engine in engines.items():
                    with engine.connect() as conn:
                        state = conn.execute(select(feed_mod.feed_state.c.size)).scalar()
                        witnessed = conn.execute(select(feed_mod.feed_witnessed.c.size)).scalar()
                    target = targets.setdefault(mid, state or 0) if state is not None else None
                    if target is None or witnessed is None or witnessed < target:
                        behind.append(mid)
                if not behind:
                    return
                if time.monotonic() > deadline:
                    raise Unreachable(f"{', '.join(behind)} kept no witnessed checkpoint within {timeout_s:.0f}s "
                                      f"(see {self.root / 'logs'})")
                time.sleep(0.2)
        finally:
            for engine in engines.values():
                engine.dispose()

    # -- gateway replicas (SPEC §12) -------------------------------------------

    @property
    def gateway_endpoints(self) -> list[str]:
        """Every replica's endpoint, the primary first (what `alliance --gateway` takes, comma-joined)."""
        return [self.gateway_endpoint, *self.replica_endpoints]

    def gateway_processes(self) -> list[subprocess.Popen | None]:
        return [self.gateway_process, *self.replica_processes]

    def start_gateway(self, index: int) -> subprocess.Popen:
        """(Re)start replica ``index`` (0 is the primary) on its own port and wait until it serves."""
        endpoint = self.gateway_endpoints[index]
        name = "gateway" if index == 0 else f"gateway-{index + 1}"
        process = self._spawn(name, ["gateway", "serve", "--home", str(self.gateway_home), "--listen", endpoint])
        if index == 0:
            self.gateway_process = process
        else:
            self.replica_processes[index - 1] = process
        self.wait_serving(endpoint, gateway=True)
        return process

    def kill_gateway(self, index: int) -> None:
        """SIGKILL replica ``index``: no clean shutdown, no flush, mid-request."""
        process = self.gateway_processes()[index]
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop_member(self, member_id: str) -> None:
        _terminate(self.members[member_id].process)

    def start_member(self, member_id: str) -> None:
        """(Re)start one member node, e.g. after it installed rotated keys."""
        m = self.members[member_id]
        m.process = self._spawn(m.member_id, ["member", "serve", "--home", str(m.home)])
        self.wait_serving(m.endpoint)

    def stop(self) -> None:
        for m in self.members.values():
            _terminate(m.process)
        for process in self.gateway_processes():
            _terminate(process)

    def state(self) -> dict:
        return {
            "gateway": self.gateway_endpoint,
            "admin_home": str(self.admin_home),
            "gateway_home": str(self.gateway_home),
            "auditor_home": str(self.auditor_home) if self.auditor_home else None,
            "members": {m.member_id: {"home": str(m.home), "endpoint": m.endpoint} for m in self.members.values()},
        }

    def __enter__(self) -> "LocalAlliance":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does (KeyboardInterrupt), so every
    LocalAlliance on the way out stops the gateway and members it started.
    Python's default SIGTERM kills at once and would orphan them, each still
    cutting witness checkpoints and refreshing its feed."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(process: subprocess.Popen | None, timeout_s: float = 5.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


"""Wiring for `alliance member serve`: load the member home, open the loan
book, start the mutual-TLS gRPC server with health and reflection."""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import grpc

from alliance import db, matching_key, paillier, pki, transport
from alliance.errors import UsageError
from alliance.v1 import alliance_pb2, alliance_pb2_grpc
from alliance_member import store, witness
from alliance_member.home import MemberHome
from alliance_member.service import MemberService, PeerTrust

log = logging.getLogger("alliance.member")


class MatchingKeySource:
    """Re-reads the installed matching key when its file changes, so a key
    installed (or rotated) after start-up is used without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._key: matching_key.MatchingKey | None = None
        self._lock = threading.Lock()

    def __call__(self) -> matching_key.MatchingKey | None:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                return None
            if mtime != self._mtime:
                self._key = matching_key.load(self.path)
                self._mtime = mtime
            return self._key


def build_server(home_dir: Path, *, db_url: str | None = None, listen: str | None = None) -> tuple[grpc.Server, int]:
    home = MemberHome(home_dir)
    cfg = home.config()
    if cfg.role != "member":
        raise UsageError(f"{home_dir} is an {cfg.role} home; only members serve")
    if not home.is_joined():
        raise UsageError(f"{home_dir} has not joined the alliance yet (run `alliance member join`)")
    engine = db.make_engine(home.db_url(db_url))
    store.create_schema(engine)
    key_pem, cert_pem, ca_pem = pki.read_private_file(home.tls_key), home.tls_cert.read_bytes(), home.ca_cert.read_bytes()
    service = MemberService(
        member_id=cfg.member_id,
        engine=engine,
        trust=PeerTrust(engine, pki.load_cert_pem(home.ca_cert)),
        signing_key=pki.load_ed25519_private_pem(home.signing_key),
        matching_key=MatchingKeySource(home.matching_key),
        mask_pools=paillier.MaskPools(target=32),
    )
    # SPEC §5.2: only the gateway role may call a member node, on any RPC.
    server = transport.make_server(max_workers=16, allowed_roles=("gateway",))
    alliance_pb2_grpc.add_MemberNodeServicer_to_server(service, server)
    transport.add_health_and_reflection(server, [alliance_pb2.DESCRIPTOR.services_by_name["MemberNode"].full_name])
    address = listen or cfg.listen
    port = transport.bind(server, address, transport.server_credentials(key_pem, cert_pem, ca_pem), "the member node")
    return server, port


def serve(home_dir: Path, *, db_url: str | None = None, listen: str | None = None) -> None:
    server, port = build_server(home_dir, db_url=db_url, listen=listen)
    server.start()
    log.info("member node listening on port %d", port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    home = MemberHome(home_dir)
    witness.start(home, db.make_engine(home.db_url(db_url)), stop)  # SPEC §6.1: cosign the log's checkpoints
    stop.wait()
    server.stop(grace=2).wait()

"""Wiring for `alliance member serve`: load the member home, open the loan
book, start the mutual-TLS gRPC server with health and reflection."""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import grpc
from sqlalchemy import Engine, select

from alliance import db, masks, matching_key, naive, paillier, pki, transport
from alliance import metrics as alliance_metrics
from alliance.errors import UsageError
from alliance.v1 import alliance_pb2, alliance_pb2_grpc
from alliance_member import book_status, onboarding, store, witness
from alliance_member.application_alerts import ApplicationAlerts
from alliance_member.feed import FeedRefresher
from alliance_member.feed_memo import FeedMemo
from alliance_member.gateway_client import GatewayClient
from alliance_member.home import MemberHome
from alliance_member.metrics import MemberMetrics
from alliance_member.reconcile import Reconciler
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


def warm_known_querier_keys(engine: Engine, mask_pools: masks.MaskPools, own_id: str) -> int:
    """Pools warm before the first query (SPEC §8): every querier key this
    node has pinned gets its pool (and DJN table) built in the background now;
    keys first seen later get theirs on first sight (MaskPools.for_key)."""
    with engine.connect() as conn:
        rows = conn.execute(select(store.pinned_credentials.c.member_id, store.pinned_credentials.c.credential)).all()
    warmed = 0
    for member_id, credential in rows:
        if member_id == own_id:
            continue
        try:
            body = alliance_pb2.CredentialBody.FromString(alliance_pb2.Credential.FromString(bytes(credential)).body)
            if body.role != alliance_pb2.ROLE_MEMBER or not body.paillier_n:
                continue
            mask_pools.warm(paillier.PaillierPublicKey.from_bytes(body.paillier_n))
            warmed += 1
        except Exception:  # noqa: BLE001 - a bad pin costs its warm-up, never the start
            log.warning("cannot warm the mask pool of %s: unreadable pinned credential", member_id)
    return warmed


def build_server(home_dir: Path, *, db_url: str | None = None, listen: str | None = None, webhook: str | None = None,
                 background: list | None = None, metrics: MemberMetrics | None = None) -> tuple[grpc.Server, int]:
    """The member node's server. ``background`` receives the workers to
    close on shutdown (application alerts, webhook; SPEC §9); ``metrics``
    the Prometheus metrics to feed (SPEC §12)."""
    home = MemberHome(home_dir)
    cfg = home.config()
    if cfg.role != "member":
        raise UsageError(f"{home_dir} is an {cfg.role} home; only members serve")
    if not home.is_joined():
        raise UsageError(f"{home_dir} has not joined the alliance yet (run `alliance member join`)")
    engine = db.make_engine(home.db_url(db_url))
    store.create_schema(engine, home_dir)  # refuses a database older than this release (SPEC §12)
    workers: list = [] if background is None else background
    if webhook is not None:
        from alliance_member.webhook import Webhook

        workers.append(Webhook(webhook).listen())  # before the alerts worker, so it closes after it
    application_alerts = ApplicationAlerts(engine)
    workers.insert(0, application_alerts)
    key_pem, cert_pem, ca_pem = pki.read_private_file(home.tls_key), home.tls_cert.read_bytes(), home.ca_cert.read_bytes()
    mask_pools = masks.MaskPools(target=32, mode=masks.mode_from_env())
    # SPEC §5.1: trust is gated by this member's own proven view of the membership feed,
    # refreshed in the background; the first refresh happens before serving.
    feed = onboarding.open_feed(home, GatewayClient(home), engine=engine)
    refresher = FeedRefresher(feed)
    refresher.refresh_once()
    refresher.start()
    _send_book_status(home, engine)  # SPEC §10: at start (also resends one an import could not send)
    service = MemberService(
        member_id=cfg.member_id,
        engine=engine,
        trust=PeerTrust(engine, pki.load_cert_pem(home.ca_cert), FeedMemo(feed)),
        signing_key=pki.load_ed25519_private_pem(home.signing_key),
        matching_key=MatchingKeySource(home.matching_key),
        mask_pools=mask_pools,
        after_answer=application_alerts.submit,
        metrics=metrics,
        naive_baseline=naive.enabled(),
        book_status=book_status.StatusSource(home_dir),
    )
    if service.naive_baseline:
        log.warning("%s=naive: answering with the SPEC §8 naive baseline (benchmark only)", naive.ENV)
    if metrics is not None:
        metrics.bind(engine=engine, mask_pools=mask_pools, feed_age=feed.age_s)
    log.info("warming mask pools for %d known querier keys (%s masks)",
             warm_known_querier_keys(engine, mask_pools, cfg.member_id), mask_pools.mode)
    # SPEC §5.2: only the gateway role may call a member node, on any RPC.
    server = transport.make_server(max_workers=16, allowed_roles=("gateway",))
    alliance_pb2_grpc.add_MemberNodeServicer_to_server(service, server)
    transport.add_health_and_reflection(server, [alliance_pb2.DESCRIPTOR.services_by_name["MemberNode"].full_name])
    address = listen or cfg.listen
    port = transport.bind(server, address, transport.server_credentials(key_pem, cert_pem, ca_pem), "the member node")
    return server, port


def serve(home_dir: Path, *, db_url: str | None = None, listen: str | None = None, webhook: str | None = None,
          metrics_listen: str | None = None) -> None:
    if metrics_listen:
        alliance_metrics.parse_listen(metrics_listen)  # a bad address fails before anything starts
    metrics = MemberMetrics() if metrics_listen else None
    background: list = []
    server, port = build_server(home_dir, db_url=db_url, listen=listen, webhook=webhook, background=background, metrics=metrics)
    endpoint = alliance_metrics.serve_metrics(metrics.registry, metrics_listen) if metrics is not None and metrics_listen else None
    server.start()
    log.info("member node listening on port %d", port)
    reconciler = _start_reconciler(home_dir, db_url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    home = MemberHome(home_dir)
    witness.start(home, db.make_engine(home.db_url(db_url)), stop)  # SPEC §6.1: cosign the log's checkpoints
    stop.wait()
    reconciler.stop()
    server.stop(grace=2).wait()
    for worker in background:  # alerts first (they may feed the webhook), then the webhook
        worker.close()
    if endpoint is not None:
        endpoint.close()


def _send_book_status(home: MemberHome, engine: Engine) -> None:
    """Sign the book's current status, save it for the answers, and send it;
    a gateway that cannot be reached now costs a warning, never the start."""
    body, signature = book_status.make(home, engine)
    result = book_status.send(home, body, signature)
    (log.info if result.sent else log.warning)("%s", result.line())


def _start_reconciler(home_dir: Path, db_url: str | None) -> Reconciler:
    """SPEC §6.2: reconcile every 15 minutes, alerting on an unlogged answer."""
    engine = db.make_engine(MemberHome(home_dir).db_url(db_url))
    reconciler = Reconciler(home_dir, engine, db_url=db_url)
    reconciler.start()
    return reconciler

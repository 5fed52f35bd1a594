"""Wiring for `alliance gateway serve`: load the gateway home, open the
database, start the mutual-TLS gRPC server with health and reflection."""
from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import signal
import threading
from pathlib import Path
from typing import IO, Any

import grpc
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from alliance import db, metrics as alliance_metrics, naive, paillier, pki, transport
from alliance.errors import UsageError
from alliance.v1 import alliance_pb2, alliance_pb2_grpc
from alliance_gateway import audit_log, schema
from alliance_gateway.home import GatewayHome, resolve_db_url
from alliance_gateway.member_dispatch import Arrivals, MemberDispatcher
from alliance_gateway.metrics import GatewayMetrics
from alliance_gateway.reconcile_rpcs import log_gateway_started
from alliance_gateway.registry import Registry
from alliance_gateway.service import GatewayService

log = logging.getLogger("alliance.gateway")


class AioMemberChannels:
    """The gateway's fan-out on grpc.aio (SPEC §8): one event-loop thread and
    one mutual-TLS channel per member endpoint, with one coalescing
    dispatcher per member (member_dispatch.py): a member with a call in
    flight gets the requests queued meanwhile as one AnswerBatch. grpc's
    synchronous futures instead start a channel thread each time a channel
    that went idle gets a call, i.e. a thread per member per query under
    light load. ``stub(endpoint).Answer.future(request, timeout=…)`` returns
    a concurrent.futures.Future, as the service expects."""

    def __init__(self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes, metrics: GatewayMetrics | None = None,
                 arrivals: Arrivals | None = None) -> None:
        self._creds = (key_pem, cert_pem, ca_pem)
        self._arrivals = arrivals  # the service's count of queries on their way (the dispatchers hold for them)
        self._on_batch = metrics.member_batch if metrics is not None else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="member-fan-out", daemon=True)
        self._thread.start()
        self._stubs: dict[str, _DispatchStub] = {}
        self._lock = threading.Lock()

    def stub(self, endpoint: str) -> "_DispatchStub":
        with self._lock:
            stub = self._stubs.get(endpoint)
            if stub is None:
                async def make() -> Any:
                    return alliance_pb2_grpc.MemberNodeStub(transport.aio_secure_channel(endpoint, *self._creds))

                aio_stub = asyncio.run_coroutine_threadsafe(make(), self._loop).result()
                stub = self._stubs[endpoint] = _DispatchStub(MemberDispatcher(self._loop, aio_stub, on_batch=self._on_batch,
                                                                                arrivals=self._arrivals))
            return stub


class _DispatchStub:
    """What GatewayService._fan_out calls: ``Answer.future(request, timeout)``."""

    def __init__(self, dispatcher: MemberDispatcher) -> None:
        self.Answer = self
        self._dispatcher = dispatcher

    def future(self, request: Any, timeout: float | None = None) -> concurrent.futures.Future:
        return self._dispatcher.submit(request, timeout if timeout is not None else DEFAULT_TIMEOUT_S)


DEFAULT_TIMEOUT_S = 2.0  # SPEC §5's default deadline, for a caller that gives none


class MemberChannels:
    """One mutual-TLS channel per member endpoint, reused across queries
    (synchronous grpc; the server uses AioMemberChannels)."""

    def __init__(self, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> None:
        self._creds = (key_pem, cert_pem, ca_pem)
        self._stubs: dict[str, alliance_pb2_grpc.MemberNodeStub] = {}
        self._lock = threading.Lock()

    def stub(self, endpoint: str) -> alliance_pb2_grpc.MemberNodeStub:
        with self._lock:
            stub = self._stubs.get(endpoint)
            if stub is None:
                stub = alliance_pb2_grpc.MemberNodeStub(transport.secure_channel(endpoint, *self._creds))
                self._stubs[endpoint] = stub
            return stub


def open_database(home: GatewayHome, db_url: str | None = None) -> Engine:
    """The registry and audit log; durable, because no query may be answered
    before its log entry would survive a power loss."""
    engine = db.make_engine(resolve_db_url(db_url, home.config().db_url, home.default_db), durable=True)
    schema.create_schema(engine)
    return engine


def build_server(home_dir: Path, *, db_url: str | None = None, listen: str | None = None,
                 metrics: GatewayMetrics | None = None) -> tuple[grpc.Server, int, GatewayService]:
    home = GatewayHome(home_dir)
    cfg = home.config()
    engine = open_database(home, db_url)
    key_pem, cert_pem, ca_pem = pki.read_private_file(home.tls_key), home.tls_cert.read_bytes(), home.ca_cert.read_bytes()
    reader = audit_log.LogReader(
        engine, origin=cfg.log_origin, key_name=cfg.log_key_name, signing_key=pki.load_ed25519_private_pem(home.log_key)
    )
    arrivals = Arrivals()
    channels = AioMemberChannels(key_pem, cert_pem, ca_pem, metrics, arrivals)
    service = GatewayService(
        engine=engine,
        registry=Registry(engine, cfg.registry_refresh_ms),
        log_reader=reader,
        config=cfg,
        member_stub=channels.stub,
        mask_pools=paillier.MaskPools(target=8),
        metrics=metrics,
        naive_baseline=naive.enabled(),
        arrivals=arrivals,
    )
    if service.naive_baseline:
        log.warning("%s=naive: reports use the SPEC §8 naive baseline (benchmark only)", naive.ENV)
    server = transport.make_server(max_workers=32)
    alliance_pb2_grpc.add_GatewayServicer_to_server(service, server)
    transport.add_health_and_reflection(server, [alliance_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name])
    port = transport.bind(server, listen or cfg.listen, transport.server_credentials(key_pem, cert_pem, ca_pem), "the gateway")
    return server, port, service


def single_gateway_lock(url: str) -> IO[str] | None:
    """SPEC §12: SQLite stays single-gateway. A gateway serving a SQLite
    database holds an exclusive lock on ``<database>.gateway-lock`` for its
    lifetime (the kernel drops it when the process dies, even by SIGKILL);
    a second `gateway serve` on the same file is refused clearly. Replicas
    share a PostgreSQL database instead; None for those."""
    parsed = make_url(db.normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.with_name(path.name + ".gateway-lock"), "a+", encoding="utf-8")  # noqa: SIM115 - held while serving
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"another `alliance gateway serve` is already serving the SQLite database {path}: SQLite serves "
                         "one gateway only; run replicas on one PostgreSQL database (--db postgresql://…, SPEC §12)") from None
    return handle


def serve(home_dir: Path, *, db_url: str | None = None, listen: str | None = None, on_ready=None,  # type: ignore[no-untyped-def]
          metrics_listen: str | None = None) -> None:
    if metrics_listen:
        alliance_metrics.parse_listen(metrics_listen)  # a bad address fails before anything starts
    metrics = GatewayMetrics() if metrics_listen else None
    server, port, service = build_server(home_dir, db_url=db_url, listen=listen, metrics=metrics)
    # after every argument check (a refused command changes no file), before anything is logged or served
    lock = single_gateway_lock(service.engine.url.render_as_string(hide_password=False))  # noqa: F841 - held until exit
    endpoint = alliance_metrics.serve_metrics(metrics.registry, metrics_listen) if metrics is not None and metrics_listen else None
    log_gateway_started(service.engine, deadline_ms=service.config.deadline_ms, k_min=service.config.k_min)  # SPEC §6.2
    server.start()
    service.start_background()
    log.info("gateway listening on port %d", port)
    if on_ready is not None:
        on_ready(port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    service.stop_background()
    if endpoint is not None:
        endpoint.close()

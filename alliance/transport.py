"""Mutual-TLS gRPC plumbing shared by every process (SPEC §1 property 7):
no plaintext port exists, every peer presents a certificate from the alliance
CA, and each call is bound to the member id and role in that certificate.

Roles on both ends (SPEC §5.2): servers gate every RPC on the client's role
(:class:`RoleGate`); clients of the gateway use :func:`gateway_channel`, whose
handshake accepts only a certificate carrying the reserved gateway name
(:data:`alliance.pki.GATEWAY_TLS_NAME`), which the CA gives gateway
certificates only."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alliance import pki
from alliance.errors import Refused, UsageError

# Batches stream one subject per message, so no message approaches this;
# it bounds what a garbled or hostile peer can make us allocate.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
)


def server_credentials(key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True)


def secure_channel(target: str, key_pem: bytes, cert_pem: bytes, ca_pem: bytes, *, server_name: str | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
    options = list(CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(target, creds, options=options)


def aio_secure_channel(target: str, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> grpc.aio.Channel:
    """As secure_channel, on grpc.aio (create it inside the event loop that uses it)."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
    return grpc.aio.secure_channel(target, creds, options=list(CHANNEL_OPTIONS))


def gateway_channel(target: str, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> grpc.Channel:
    """A channel to the gateway: the TLS handshake fails unless the server's
    certificate is from the alliance CA *and* has the gateway role (carries
    the reserved name the CA issues to gateways only). Every client of the
    gateway (querier, member tools, auditor, witness, bench) uses this."""
    return secure_channel(target, key_pem, cert_pem, ca_pem, server_name=pki.GATEWAY_TLS_NAME)


class RoleGate(grpc.ServerInterceptor):
    """Refuses, before any handler runs, every RPC (health and reflection
    included) whose TLS client certificate lacks one of ``roles``:
    PERMISSION_DENIED with ``alliance-reason: wrong_role``."""

    def __init__(self, roles: Sequence[str]) -> None:
        self.roles = tuple(roles)

    def _check(self, context: grpc.ServicerContext) -> None:
        try:
            peer_id, role, _ = peer_identity(context)
        except Refused as exc:
            context.set_trailing_metadata((("alliance-reason", exc.reason),))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{exc.reason}: {exc}")
        if role not in self.roles:
            context.set_trailing_metadata((("alliance-reason", "wrong_role"),))
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"wrong_role: {peer_id} ({role}) may not call this service; only {' or '.join(self.roles)} may")

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        check = self._check

        def gated(behaviour):  # type: ignore[no-untyped-def]
            def run(request_or_iterator, context):  # type: ignore[no-untyped-def]
                check(context)
                return behaviour(request_or_iterator, context)
            return run

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(gated(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(gated(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(gated(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(gated(handler.stream_stream), handler.request_deserializer, handler.response_serializer)


def make_server(max_workers: int = 16, *, allowed_roles: Sequence[str] | None = None) -> grpc.Server:
    """``allowed_roles``: client roles admitted to every RPC of this server
    (None: any alliance certificate; the services check roles themselves)."""
    interceptors = [RoleGate(allowed_roles)] if allowed_roles is not None else []
    # No SO_REUSEPORT: a second process on a port already in use must fail
    # loudly, not share the port unnoticed (SPEC §12).
    return grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
                       interceptors=interceptors)


def check_listen_address(address: str, what: str) -> None:
    """Fail with one clear line before gRPC tries ``address``: it must be
    host:port (port 0-65535, 0 for any free port), the host must resolve,
    and no resolved address may be in use. gRPC alone would log its own
    error line, wrap an out-of-range port around, and serve on ::1 alone
    when 127.0.0.1 is taken for "localhost"."""
    import errno
    import socket

    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"{what} cannot listen on {address!r}: give host:port with a port 0-65535")
    port = int(port_text)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"{what} cannot listen on {address}: host {host!r} does not resolve ({exc})") from None
    if port == 0:
        return
    for family, kind, proto, _, sockaddr in infos:
        probe = socket.socket(family, kind, proto)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"{what} cannot listen on {address}: port {port} is in use on {sockaddr[0]} "
                                 "(another process, or a replica configured with the same port?)") from None
            # anything else (no IPv6 here, not a local address…) is gRPC's to judge
        finally:
            probe.close()


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials, what: str) -> int:
    """Listen on ``address`` or fail with a message that says why."""
    check_listen_address(address, what)
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise UsageError(f"{what} cannot listen on {address}: the address is in use (another process, or a replica "
                      "configured with the same port?) or not local to this machine")
    return port


def add_health_and_reflection(server: grpc.Server, service_names: Sequence[str]) -> health.HealthServicer:
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*service_names, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    return health_servicer


def peer_identity(context: grpc.ServicerContext) -> tuple[str, str, bytes]:
    """(member id, role, SHA-256 of the DER certificate) of the authenticated
    TLS peer; the digest lets the gateway insist on the *registered* certificate."""
    certs = context.auth_context().get("x509_pem_cert")
    if not certs:
        raise Refused("no client certificate", reason="unauthenticated")
    pem = bytes(certs[0])
    known = _PEER_IDENTITIES.get(pem)
    if known is not None:
        return known
    cert = pki.as_certificate(pem)
    member_id, role = pki.peer_identity(cert)
    identity = (member_id, role, pki.cert_sha256(cert))
    if len(_PEER_IDENTITIES) >= _PEER_IDENTITIES_MAX:
        _PEER_IDENTITIES.clear()
    _PEER_IDENTITIES[pem] = identity  # a pure function of the exact bytes TLS verified: safe to remember
    return identity


# Parsing the peer's X.509 certificate cost ≈ 0.3 ms per RPC, twice per member
# answer (role gate and handler); the identity depends on the bytes alone.
_PEER_IDENTITIES: dict[bytes, tuple[str, str, bytes]] = {}
_PEER_IDENTITIES_MAX = 4096

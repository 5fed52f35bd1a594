"""Mutual-TLS gRPC plumbing shared by every process (SPEC §1 property 7):
no plaintext port exists, every peer presents a certificate from the alliance
CA, and each call is bound to the member id and role in that certificate."""
from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alliance import pki
from alliance.errors import Refused

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


def make_server(max_workers: int = 16) -> grpc.Server:
    return grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=list(CHANNEL_OPTIONS))


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
    cert = pki.as_certificate(certs[0])
    member_id, role = pki.peer_identity(cert)
    return member_id, role, pki.cert_sha256(cert)

"""What the auditor needs from the gateway, and how it connects to it."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from alliance_member.home import MemberHome


class LogSource(Protocol):
    """What the auditor needs from the gateway (GatewayClient provides it)."""

    def checkpoint(self) -> str: ...
    def entries(self, start: int, end: int) -> Iterable[Any]: ...  # items with .index and .data
    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]: ...
    def consistency_proof(self, first: int, second: int) -> list[bytes]: ...
    def close(self) -> None: ...


def connect(home: MemberHome) -> LogSource:
    """A mutual-TLS client for the gateway named in the home (replaced in tests)."""
    from alliance_member.gateway_client import GatewayClient

    return GatewayClient(home)


@contextmanager
def opened(home: MemberHome, client: LogSource | None) -> Iterator[LogSource]:
    """``client`` if given (left open), else a new connection closed on exit."""
    if client is not None:
        yield client
        return
    source = connect(home)
    try:
        yield source
    finally:
        source.close()


__all__ = ["LogSource", "connect", "opened"]

"""Witnessing on the gateway's side (SPEC §6.1): cut a log-signed witness
checkpoint every ``witness_interval_s``, serve it to members with a
consistency proof from the size they last cosigned, accept their C2SP
``cosignature/v1`` lines, and serve checkpoints with every stored line.

A mixin of GatewayService: it uses the service's engine, log reader,
registry and peer checks. The gateway is not trusted by anyone for any of
this; it only relays. Cut checkpoints and cosignatures live in the database,
so every replica serves the same ones."""
from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from alliance import checkpoint as tlog
from alliance import cosignature
from alliance.errors import CryptoError
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import schema

log = logging.getLogger("alliance.gateway.witness")

_wc = schema.witness_checkpoints.c
_cs = schema.cosignatures.c
MAX_NOTE_BYTES = 4096


class WitnessRpcs:
    """GetWitnessCheckpoint, PostCosignature, GetWitnessedCheckpoint and the cutter."""

    engine: Any
    log: Any
    config: Any
    _stop: threading.Event

    # -- cutting --------------------------------------------------------------

    def cut_witness_checkpoint(self) -> int:
        """Keep a log-signed checkpoint of the current size (with its
        `membership` line) unless one of that size is already kept; returns
        the size. Notes are deterministic (Ed25519), so replicas agree."""
        size, note = self.log.signed_checkpoint()
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(_wc.size).where(_wc.size == size)).first() is None:
                    conn.execute(insert(schema.witness_checkpoints).values(size=size, note=note, cut_at_ms=self._now_ms()))
        except IntegrityError:
            pass  # another replica cut the same size first
        return size

    def start_witness_cutter(self) -> None:
        interval = float(getattr(self.config, "witness_interval_s", 10.0))

        def run() -> None:
            while True:
                try:
                    self.cut_witness_checkpoint()
                except Exception:  # noqa: BLE001 - the database may be briefly away; try again next time
                    log.exception("could not cut a witness checkpoint")
                if self._stop.wait(interval):
                    return

        self._cutter = threading.Thread(target=run, name="witness-cutter", daemon=True)
        self._cutter.start()

    def stop_witness_cutter(self) -> None:
        cutter = getattr(self, "_cutter", None)
        if cutter is not None:
            cutter.join(timeout=5)

    def _newest_cut(self) -> tuple[int, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_wc.size, _wc.note).order_by(_wc.size.desc()).limit(1)).first()
        return None if row is None else (int(row.size), row.note)

    # -- RPCs -------------------------------------------------------------------

    def GetWitnessCheckpoint(self, request: pb.GetWitnessCheckpointRequest, context: grpc.ServicerContext) -> pb.WitnessCheckpoint:
        self._require_active(context, ("member",), "witness the log")  # type: ignore[attr-defined]
        newest = self._newest_cut()
        if newest is None:
            self.cut_witness_checkpoint()
            newest = self._newest_cut()
        assert newest is not None
        size, note = newest
        old = request.old_size
        if old > size:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"old size {old} is beyond the newest witness checkpoint ({size})")
        proof = [] if old in (0, size) else self.log.consistency_proof(old, size)
        return pb.WitnessCheckpoint(checkpoint=note, consistency_proof=proof)

    def PostCosignature(self, request: pb.PostCosignatureRequest, context: grpc.ServicerContext) -> pb.PostCosignatureResponse:
        member = self._require_active(context, ("member",), "cosign checkpoints")  # type: ignore[attr-defined]
        if len(request.checkpoint) > MAX_NOTE_BYTES or len(request.cosignature_line) > 512:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "checkpoint or cosignature line too long")
        try:
            cp = tlog.Checkpoint.parse(_note_text(request.checkpoint))
        except CryptoError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed checkpoint: {exc}")
        with self.engine.connect() as conn:
            kept = conn.execute(select(_wc.note).where(_wc.size == cp.size)).scalar()
        if kept is None or kept != request.checkpoint:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"no witness checkpoint of size {cp.size} was cut with that content")
        name = request.cosignature_line.removeprefix(tlog.SIGNATURE_PREFIX).partition(" ")[0]
        if name != member.member_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{member.member_id} may not post a cosignature in the name {name!r}")
        try:
            found = cosignature.verify_line(request.cosignature_line, cp, {member.member_id: member.ed25519_public_key},
                                            now_s=self._now_ms() // 1000)  # type: ignore[attr-defined]
        except CryptoError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cosignature refused: {exc}")
        if found is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cosignature is not by the member's registered key")
        with self.engine.begin() as conn:
            old = conn.execute(select(_cs.time_s).where(and_(_cs.size == cp.size, _cs.member_id == member.member_id))).scalar()
            if old is None or found.time_s > old:
                conn.execute(delete(schema.cosignatures).where(and_(_cs.size == cp.size, _cs.member_id == member.member_id)))
                conn.execute(insert(schema.cosignatures).values(size=cp.size, member_id=member.member_id,
                                                                line=request.cosignature_line, time_s=found.time_s))
        return pb.PostCosignatureResponse()

    def GetWitnessedCheckpoint(self, request: pb.GetWitnessedCheckpointRequest,
                               context: grpc.ServicerContext) -> pb.GetWitnessedCheckpointResponse:
        self._require_active(context, ("member", "auditor"), "read witnessed checkpoints")  # type: ignore[attr-defined]
        return self.witnessed_checkpoints()

    def witnessed_checkpoints(self) -> pb.GetWitnessedCheckpointResponse:
        newest = self._newest_cut()
        if newest is None:
            return pb.GetWitnessedCheckpointResponse()
        with self.engine.connect() as conn:
            sizes = sorted({int(s) for (s,) in conn.execute(select(func.max(_cs.size)).group_by(_cs.member_id))})
            notes = {}
            for size in sorted(set(sizes) | {newest[0]}):
                note = conn.execute(select(_wc.note).where(_wc.size == size)).scalar()
                lines = [r.line for r in conn.execute(select(_cs.line).where(_cs.size == size).order_by(_cs.member_id))]
                notes[size] = cosignature.add_cosignatures(note, lines)
        return pb.GetWitnessedCheckpointResponse(checkpoint=notes[newest[0]], newest_per_witness=[notes[s] for s in sizes])


def _note_text(note: str) -> str:
    split = note.rfind("\n\n")
    if split < 0:
        raise CryptoError("signed note has no blank line before its signatures")
    return note[:split + 1]

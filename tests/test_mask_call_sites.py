"""SPEC §1 property 4 and §4 at the call sites, not only in the pool: two
answers by the same member to the same query content, and two gateway
precheck results over the same inputs, are different ciphertexts, because each
carries a fresh single-use mask (recovered here independently and checked to
be distinct, non-trivial encryptions of 0). Also: the member warms the pools
of the querier keys it has pinned, and its DJN base is its own."""
from __future__ import annotations

import time

import pytest

from alliance import db, masks, paillier
from alliance.v1 import alliance_pb2 as pb
from alliance_member import store
from alliance_member.server import warm_known_querier_keys
from alliance_member.service import MemberService, PeerTrust
from tests.alliance_fixtures import MK, LocalCA, signed_query
from tests.test_gateway_service import ca, gateway, members, process  # noqa: F401 - fixtures

# ca, members and gateway are the fixtures of test_gateway_service (members mq, ma, mb, mc).


def _member(ca, member, tmp_path, pools):  # type: ignore[no-untyped-def]
    engine = db.make_engine(db.sqlite_url(tmp_path / f"{member.member_id}-{id(pools)}.db"))
    store.create_schema(engine)
    return MemberService(member_id=member.member_id, engine=engine, trust=PeerTrust(engine, ca.cert),
                         signing_key=member.signing_key, matching_key=lambda: MK, mask_pools=pools)


def _ask(service, querier, query):  # type: ignore[no-untyped-def]
    request = pb.MemberQueryRequest(query=query, querier_credential=querier.credential.SerializeToString())
    return paillier.decode_ciphertext(querier.public_key, service.answer(request).ciphertext)


def _mask_of(pk: paillier.PaillierPublicKey, c: int, m: int) -> int:
    """c = (1 + m·n)·mask mod n², so mask = c · (1 + m·n)⁻¹ mod n²."""
    return c * pow(1 + m * pk.n, -1, pk.n_square) % pk.n_square


@pytest.mark.parametrize("mode", ["djn", "plain"])
def test_two_answers_to_the_same_content_are_different_ciphertexts(ca, members, tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    querier = members["mq"]
    pools = masks.MaskPools(target=2, mode=mode)
    service = _member(ca, members["ma"], tmp_path, pools)
    try:
        if mode == "djn":
            assert pools.warm(querier.public_key).ensure_table()
        answers = [_ask(service, querier, signed_query(querier)) for _ in range(6)]   # same subject, date, purpose
        assert len(set(answers)) == 6
        plain = [querier.private_key.decrypt(c) for c in answers]
        assert plain == [0] * 6                                                        # same content …
        found = [_mask_of(querier.public_key, c, 0) for c in answers]
        assert len(set(found)) == 6 and 1 not in found                                 # … six distinct masks
        assert all(querier.private_key.decrypt(m) == 0 for m in found)
        pool = pools.for_key(querier.public_key)
        if mode == "djn":
            assert pool.made["djn"] >= 6 and pool.made["plain"] == 0                   # the DJN form really answered
        else:
            assert pool.made["djn"] == 0
    finally:
        pools.close()
        service.engine.dispose()


def test_two_members_use_different_bases_none_from_the_request(ca, members, tmp_path) -> None:  # type: ignore[no-untyped-def]
    querier = members["mq"]
    pools_a, pools_b = masks.MaskPools(target=0), masks.MaskPools(target=0)
    a, b = _member(ca, members["ma"], tmp_path, pools_a), _member(ca, members["mb"], tmp_path, pools_b)
    try:
        query = signed_query(querier)
        _ask(a, querier, query)
        _ask(b, querier, query)                          # the very same request bytes to both members
        ta, tb = pools_a.for_key(querier.public_key), pools_b.for_key(querier.public_key)
        assert ta.ensure_table() and tb.ensure_table()
        h_a, h_b = int(ta.table.h_s), int(tb.table.h_s)
        assert h_a != h_b
        wire = query.SerializeToString() + querier.credential.SerializeToString()
        width = querier.public_key.ciphertext_width
        for h in (h_a, h_b):
            assert h.to_bytes(width, "big") not in wire and (h % querier.public_key.n).to_bytes(width // 2, "big") not in wire
    finally:
        pools_a.close()
        pools_b.close()
        a.engine.dispose()
        b.engine.dispose()


def test_member_warms_the_pools_of_pinned_querier_keys(ca, members, tmp_path) -> None:  # type: ignore[no-untyped-def]
    querier = members["mq"]
    first = masks.MaskPools(target=0)
    service = _member(ca, members["ma"], tmp_path, first)
    try:
        _ask(service, querier, signed_query(querier))   # pins mq's credential
        restarted = masks.MaskPools(target=3)            # as after a restart: nothing in memory
        try:
            assert querier.public_key not in restarted
            assert warm_known_querier_keys(service.engine, restarted, "ma") == 1
            pool = restarted.for_key(querier.public_key)
            deadline = time.monotonic() + 60
            while (pool.mode != "djn" or pool.size < 3) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pool.mode == "djn" and pool.size == 3 and pool.misses == 0   # warm before any query
            assert warm_known_querier_keys(service.engine, restarted, "mq") == 0  # never its own key
        finally:
            restarted.close()
    finally:
        first.close()
        service.engine.dispose()


def test_two_prechecks_on_the_same_content_carry_different_gateway_masks(gateway, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With the blinding (r, r′) pinned and the member answers recorded, the
    gateway's own mask is recovered independently from each result: distinct,
    not 1, an encryption of 0."""
    svc, stubs, members = gateway
    r, r_prime = (1 << 100) + 12345, 777
    monkeypatch.setattr(paillier, "_draw_blinding", lambda rng: (r, r_prime))
    recorded: list[list[int]] = []
    querier = members["mq"]
    pk = querier.public_key
    for stub in stubs.values():
        inner = stub.handler

        def handler(request, inner=inner):  # type: ignore[no-untyped-def]
            response = inner(request)
            recorded[-1].append(paillier.decode_ciphertext(pk, response.ciphertext))
            return response

        stub.handler = handler
    enc_x = paillier.encode_ciphertext(pk, paillier.encrypt(pk, 10**9, paillier.fresh_mask(pk)))
    results, found = [], []
    for _ in range(2):
        recorded.append([])
        resp = process(svc, members, signed_query(querier, mode=pb.QUERY_MODE_PRECHECK, enc_x=enc_x), "mq", "member", "precheck")
        c = paillier.decode_ciphertext(pk, resp.aggregate_ciphertext)
        results.append(c)
        n2 = pk.n_square
        difference = paillier.decode_ciphertext(pk, enc_x) * pow(paillier.add(pk, recorded[-1]), -1, n2) % n2
        unmasked = pow(difference, r, n2) * (1 + r_prime * pk.n) % n2
        found.append(c * pow(unmasked, -1, n2) % n2)
        assert querier.private_key.decrypt(c) == r * 10**9 + r_prime                   # balances are 0: d = x
    assert results[0] != results[1]
    assert found[0] != found[1] and 1 not in found
    assert all(querier.private_key.decrypt(m) == 0 for m in found)

"""Shared library of the credit alliance: everything gateway, member nodes and
the CLI have in common, as small pure modules.

- identity      ID canonicalisation (GB 11643, GB 32100) and keyed tokens (SPEC §3)
- uds1          Uniform Disclosure Schema v1 row validation and streaming readers (SPEC §2)
- report        report figures, per-member computation and final formatting (SPEC §4)
- paillier      Paillier keys, packed 80-bit-slot codec, mask pools, precheck blinding (SPEC §4)
- masks         DJN mask tables, plain masks, the table budget, mask pools and their refiller (SPEC §4, §8)
- signing       signature prefixes and the exact bytes each signature covers (SPEC §5)
- pki           alliance CA, TLS certificates, credentials, join requests, pinning (SPEC §5)
- matching_key  matching key creation and HPKE-style hand-over (SPEC §3)
- merkle        RFC 6962 / RFC 9162 Merkle tree hashing and proofs (SPEC §6)
- checkpoint    C2SP tlog-checkpoint and signed-note encoding (SPEC §6)
- audit_entry   canonical byte encoding of audit log entries (SPEC §6)
- errors        typed exceptions, each carrying the CLI exit status of SPEC §7
"""

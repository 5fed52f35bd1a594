"""The auditor's client (SPEC §6, §7), behind `alliance audit`.

- :mod:`alliance_auditor.state`: what the auditor keeps in its home
  (trust anchors, every accepted checkpoint, the last verified tree).
- :mod:`alliance_auditor.log_source`: the gateway as a log source.
- :mod:`alliance_auditor.verify`: `audit checkpoint / verify / prove`, and
  the log entries checked against a signed, consistent checkpoint.
- :mod:`alliance_auditor.witness_audit`: what `audit verify` requires of
  witnesses (SPEC §6.1), as pure functions.
- :mod:`alliance_auditor.watch`: `audit watch` (credentials issued in a
  member's name).
- :mod:`alliance_auditor.activity_report`: `audit report` (members' querying).
- :mod:`alliance_auditor.monthly_report`: `audit monthly-report` (SPEC §11).

Verification itself is pure and lives in :mod:`alliance.audit_verify`.
An auditor home is a member-style home (:class:`alliance_member.home.MemberHome`)."""

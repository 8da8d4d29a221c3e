"""Tamper evidence for the audit trail: digests of shipped objects, chained and signed.

- `digest.py`: the digest format (pure): object entries, tombstones, the
  canonical body, keys under `<prefix>-digest/`.
- `journal.py`: the per-writer digest journal in the spool directory, so no
  digest is lost to a crash.
- `signing.py`: Ed25519 key files and KMS keys, sign and check.
- `digester.py`: the timer and the shutdown digest of one writer.

`central-llm-audit-verify` (central_llm_ops/audit_verify.py) checks what these write.
"""

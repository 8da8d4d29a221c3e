"""Signing digests (sidecar) and checking their signatures (verify command).

Two signers behind one narrow protocol, `sign(message) -> signature json`:

- `FileSigner`: an Ed25519 private key in a PEM file (`AUDIT_DIGEST_SIGNING_KEY_FILE`),
  for compose and tests. Its key id is the first 16 hex digits of the SHA-256 of
  the raw public key.
- `KmsSigner`: a KMS asymmetric key (`AUDIT_DIGEST_KMS_KEY_ID`, key spec
  ECC_NIST_P256, usage SIGN_VERIFY) through aiobotocore; KMS is handed the
  SHA-256 of the message (`MessageType=DIGEST`), so a digest of any size can be
  signed, and the task needs `kms:Sign` only.

`check(signature, message, public_key)` is the verify side for both; the
public key comes from a PEM file or KMS `GetPublicKey`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .digest import ECDSA_SHA_256, ED25519, signature_json

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class Signer(Protocol):
    async def sign(self, message: bytes) -> dict[str, str]: ...

    async def close(self) -> None: ...


def ed25519_key_id(public: ed25519.Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class FileSigner:
    def __init__(self, path: Path) -> None:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("the digest signing key file must hold an Ed25519 private key (PEM)")
        self._key = key
        self.key_id = ed25519_key_id(key.public_key())

    async def sign(self, message: bytes) -> dict[str, str]:
        return signature_json(ED25519, self.key_id, self._key.sign(message))

    async def close(self) -> None:
        return None


class KmsSigner:
    """One aiobotocore KMS client for the app's lifetime (entered in `open`)."""

    def __init__(self, key_id: str, region: str) -> None:
        self.key_id = key_id
        self._region = region
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def open(self) -> KmsSigner:
        from aiobotocore.session import get_session

        self._client = await self._stack.enter_async_context(
            get_session().create_client("kms", region_name=self._region)
        )
        return self

    async def sign(self, message: bytes) -> dict[str, str]:
        answer = await self._client.sign(
            KeyId=self.key_id,
            Message=hashlib.sha256(message).digest(),
            MessageType="DIGEST",
            SigningAlgorithm=ECDSA_SHA_256,
        )
        return signature_json(ECDSA_SHA_256, answer.get("KeyId", self.key_id), answer["Signature"])

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()


# --- verify side ----------------------------------------------------------------------


def load_public_key(data: bytes) -> PublicKey:
    """A PEM (or DER, as KMS GetPublicKey returns it) Ed25519 or EC public key."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = serialization.load_der_public_key(data)
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("expected an Ed25519 or EC public key")
    return key


def check(signature: dict[str, Any], message: bytes, public: PublicKey) -> str | None:
    """None when the signature is valid for `message` under `public`, else why not."""
    try:
        value = base64.b64decode(signature["value"], validate=True)
        algorithm = signature["algorithm"]
    except (KeyError, TypeError, ValueError):
        return "malformed signature"
    try:
        if algorithm == ED25519 and isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(value, message)
        elif algorithm == ECDSA_SHA_256 and isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(value, message, ec.ECDSA(hashes.SHA256()))
        else:
            return f"signature algorithm {algorithm!r} does not match the configured key"
    except InvalidSignature:
        return "signature does not verify"
    return None

"""Read audit objects from S3 and copy them to the raw archive: the ingestion's S3 seam.

Invariants: an object is streamed in chunks of `CHUNK_BYTES` (never read whole:
its size is only known, and capped, once decompressed) and, when the event
names a version, exactly that version; the response stream is closed however
the reading ends, early included. The archive copy keeps
the key, is made server-side (CopyObject) and always carries the canned ACL
`bucket-owner-full-control`, which the archive bucket's policy requires.
Copying again overwrites with the same bytes, so it is idempotent. botocore's
errors are mapped here, to `ObjectUnavailable`, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from llm_audit.events import ObjectRef

ARCHIVE_ACL = "bucket-owner-full-control"
CHUNK_BYTES = 1 << 20


class ObjectUnavailable(RuntimeError):
    """S3 refused or failed a read or a copy; the message is the error code."""


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


class S3Client(Protocol):
    def get_object(self, **kwargs: Any) -> Any: ...

    def copy_object(self, **kwargs: Any) -> Any: ...


class S3Objects:
    """Object access for the ingestion, over an injected boto3 S3 client."""

    def __init__(self, client: S3Client, archive_bucket: str | None = None) -> None:
        self._client = client
        self._archive_bucket = archive_bucket

    def chunks(self, ref: ObjectRef) -> Iterator[bytes]:
        """The object's bytes, chunk by chunk; raises ObjectUnavailable (also mid-stream)."""
        version = {"VersionId": ref.version_id} if ref.version_id else {}
        try:
            answer = self._client.get_object(Bucket=ref.bucket, Key=ref.key, **version)
            with closing(answer["Body"]) as body:
                yield from body.iter_chunks(CHUNK_BYTES)
        except (ClientError, BotoCoreError) as exc:
            raise ObjectUnavailable(f"read failed: {_code(exc)}") from exc

    def archive(self, ref: ObjectRef) -> None:
        """Copy the object to the archive bucket under the same key (no-op without one)."""
        if self._archive_bucket is None:
            return
        source = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            source["VersionId"] = ref.version_id
        try:
            self._client.copy_object(
                Bucket=self._archive_bucket, Key=ref.key, CopySource=source, ACL=ARCHIVE_ACL
            )
        except (ClientError, BotoCoreError) as exc:
            raise ObjectUnavailable(f"archive copy failed: {_code(exc)}") from exc

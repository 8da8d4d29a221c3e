"""The object sink: the one seam between the shipper and S3.

`ObjectSink` is the narrow protocol the shipper talks to; `S3ObjectSink` is the
aiobotocore implementation, one client for the app's lifetime (an async
context manager entered in the app's lifecycle). Invariants:

- `put` either returns (S3 confirmed the object) or raises `SinkError`; every
  botocore/aiohttp/OS exception is mapped to it in `classify`, the one place
  that decides "retryable or not".
- botocore makes exactly one attempt per call (`total_max_attempts=1`) with
  bounded connect/read timeouts, so the shipper's backoff is the only retry
  policy in charge.
- The endpoint is botocore's own business: it reads `AWS_ENDPOINT_URL` /
  `AWS_ENDPOINT_URL_S3` itself; there is no endpoint setting here.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
)

# S3 error codes that another attempt can fix on its own.
_RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "OperationAborted",
        "BadDigest",
        "XAmzContentSHA256Mismatch",
    }
)


class SinkError(Exception):
    """A put that S3 did not confirm. `retryable`: another attempt may succeed as things are."""

    def __init__(self, message: str, *, code: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class ObjectSink(Protocol):
    async def put(self, key: str, body: bytes, content_type: str) -> None:
        """Store `body` at `key`; return only once the store confirmed it."""
        ...


def classify(exc: BaseException) -> SinkError:
    """Map any exception from a put to a SinkError; the only place that knows them."""
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        retryable = code in _RETRYABLE_CODES or status >= 500 or status == 429
        return SinkError(str(exc), code=code, retryable=retryable)
    transient = (
        HTTPClientError,  # connection closed, read timeout, response streaming errors
        ConnectionError,  # endpoint unreachable, connect timeout, proxy, TLS
        IncompleteReadError,
        CredentialRetrievalError,  # the credential endpoint can be down for a moment too
        aiohttp.ClientError,
        asyncio.TimeoutError,
        OSError,
    )
    if isinstance(exc, transient):
        return SinkError(str(exc) or type(exc).__name__, code=type(exc).__name__, retryable=True)
    if isinstance(exc, BotoCoreError):  # no credentials, bad parameters, bad region, ...
        return SinkError(str(exc), code=type(exc).__name__, retryable=False)
    return SinkError(repr(exc), code=type(exc).__name__, retryable=False)


class S3ObjectSink:
    """Puts objects into one bucket through one aiobotocore client."""

    def __init__(
        self,
        bucket: str,
        region: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_pool_connections: int = 16,
    ) -> None:
        self.bucket = bucket
        self._region = region
        self._config = AioConfig(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=max_pool_connections,
        )
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> Self:
        session = get_session()
        self._client = await self._stack.enter_async_context(
            session.create_client("s3", region_name=self._region, config=self._config)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client = None
        await self._stack.aclose()

    async def put(self, key: str, body: bytes, content_type: str) -> None:
        if self._client is None:
            raise SinkError("S3 sink is not open", code="NotOpen", retryable=False)
        try:
            await self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify(exc) from exc

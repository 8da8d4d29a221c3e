"""Who this sidecar is: version, host, process and (on ECS) the task ARN, learnt once at start."""

from __future__ import annotations

import os
import socket

import aiohttp

from . import __version__
from .record import Identity

ECS_METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"


async def discover_identity(session: aiohttp.ClientSession) -> Identity:
    """The sidecar's identity; the task ARN comes from the ECS task metadata endpoint if present."""
    task_arn = None
    base = os.environ.get(ECS_METADATA_ENV)
    if base:
        try:
            async with session.get(
                f"{base}/task", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                if response.status == 200:
                    payload = await response.json(content_type=None)
                    value = payload.get("TaskARN") if isinstance(payload, dict) else None
                    task_arn = value if isinstance(value, str) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            task_arn = None  # metadata is a nicety; the record still names host and pid
    return Identity(
        version=__version__, host=socket.gethostname(), task_arn=task_arn, pid=os.getpid()
    )

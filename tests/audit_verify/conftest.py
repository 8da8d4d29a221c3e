"""Fixtures of the verify tests: a signing key pair, a cuttable path to S3 (spool-full drops)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.faults.tcp_cut import TcpCut


@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[Path, Path]:
    """(private key PEM, public key PEM): what `openssl genpkey -algorithm ed25519` gives."""
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = tmp_path / "digest-key.pem", tmp_path / "digest-pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture
def s3_cut(moto_server: str) -> Iterator[TcpCut]:
    cut = TcpCut(moto_server).start()
    try:
        yield cut
    finally:
        cut.stop()

"""Picking ports for the child processes the tests and the benchmark start."""

from __future__ import annotations

import socket

import pytest

from central_llm_ops.children import free_port


def test_a_port_is_never_one_to_avoid_nor_inside_a_run() -> None:
    # The kernel may hand a just-released port out again: a sidecar once got its own
    # listen port as its metrics port and could not bind (CI, 2026-11-28).
    taken = set()
    for _ in range(200):
        port = free_port(span=4, avoid=taken)
        assert not taken & set(range(port, port + 4))
        taken.add(port)
        with socket.socket() as s:  # still free: nothing here binds it
            s.bind(("127.0.0.1", port))


def test_no_port_at_all_is_an_error() -> None:
    with pytest.raises(OSError, match="no run of 1 free ports"):
        free_port(avoid=range(65536))

"""The gateway's listener binds a port that holds connections in TIME_WAIT (a restart)."""

from __future__ import annotations

import socket

import pytest
from ray.serve._private import replica
from ray.serve._private.http_util import set_socket_reuse_port

from llmplat.local.runtime import port_free
from llmplat.serving.ingress_socket import reuse_address_for_direct_ingress
from support.platform import time_wait_sockets


def _serve_then_stop(reuse: bool) -> int:
    """A listener (as Serve's replica binds it: with or without address reuse) that
    answers one connection and closes it first, then stops: its port is left in TIME_WAIT."""
    listener = socket.socket()
    if reuse:
        set_socket_reuse_port(listener)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the server closes first (keep-alive timeout, shutdown)
    assert client.recv(1) == b""
    client.close()
    listener.close()
    assert time_wait_sockets(port) > 0
    return port


def test_time_wait_blocks_a_listener_without_address_reuse() -> None:
    """Why the hook exists: after Serve's default listener, nothing can bind for a minute."""
    port = _serve_then_stop(reuse=False)
    assert not port_free("127.0.0.1", port)


def test_with_address_reuse_the_port_is_free_again_at_once() -> None:
    port = _serve_then_stop(reuse=True)
    assert port_free("127.0.0.1", port)  # the pre-check of `llmplat serve`
    again = socket.socket()
    set_socket_reuse_port(again)
    again.bind(("127.0.0.1", port))  # what the restarted replica does
    again.close()


def test_a_live_listener_still_holds_the_port_against_the_pre_check() -> None:
    live = socket.socket()
    set_socket_reuse_port(live)
    live.bind(("127.0.0.1", 0))
    live.listen()
    try:
        assert not port_free("127.0.0.1", live.getsockname()[1])
    finally:
        live.close()


async def test_the_replica_listener_is_started_with_address_reuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict] = []

    async def recorded(app, options, **kwargs):
        calls.append(kwargs)
        return "started"

    monkeypatch.setattr(replica, "start_asgi_http_server", recorded)
    assert reuse_address_for_direct_ingress()
    assert reuse_address_for_direct_ingress()  # idempotent: wrapped once
    assert await replica.start_asgi_http_server("app", "opts", event_loop=None) == "started"
    assert calls == [{"event_loop": None, "enable_so_reuseport": True}]

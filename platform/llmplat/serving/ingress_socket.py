"""A gateway replica's listener starts while its port holds connections in TIME_WAIT.

Ray Serve's direct ingress binds a replica's HTTP port without ``SO_REUSEADDR``. A server
closes idle keep-alive connections itself (after the keep-alive timeout, and when it stops),
so after real traffic its port holds sockets in TIME_WAIT for a minute, and a platform
restarted within that minute cannot bind its own port: Serve then moves the gateway to
another port of its range, or the start fails. Serve's proxy binds with ``SO_REUSEADDR`` and
``SO_REUSEPORT``; the gateway's listener gets the same. A live listener still holds the port
against ``llmplat serve``, whose pre-check binds with ``SO_REUSEADDR`` only.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_MARK = "_llmplat_reuse_address"


def reuse_address_for_direct_ingress() -> bool:
    """Make this process's Serve replica bind its direct-ingress port with address reuse;
    False (and a warning) when this Ray has no such hook."""
    from llmplat.compat import serve_replica as replica

    start = getattr(replica, "start_asgi_http_server", None)
    if start is None:
        log.warning(
            "Ray Serve's replica has no start_asgi_http_server: a restart within a minute "
            "of heavy traffic may not bind the gateway's port"
        )
        return False
    if getattr(start, _MARK, False):
        return True

    async def start_reusing_address(*args: Any, **kwargs: Any) -> Any:
        kwargs["enable_so_reuseport"] = True  # Serve sets SO_REUSEADDR with it
        return await start(*args, **kwargs)

    setattr(start_reusing_address, _MARK, True)
    replica.start_asgi_http_server = start_reusing_address
    return True

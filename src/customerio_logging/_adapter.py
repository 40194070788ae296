"""The HTTP adapter SessionTransport mounts: urllib3's retries off, sockets under deadlines.

The official client's adapter (TCP keep-alive), with urllib3's own retries off (the retry
policy lives above the transport) and connections that name their sockets to the
watchdog (:mod:`._watchdog`) as they connect and send, so that a request can be cut off
at its deadline. It also names the pool a request goes through (:meth:`WatchedAdapter.route`)
for a sender that posts through that pool itself (:mod:`._posting`).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import urllib3.poolmanager
from requests.adapters import HTTPAdapter
from requests.exceptions import InvalidURL
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationValueError
from urllib3.util.retry import Retry

from ._watchdog import watch_socket

if TYPE_CHECKING:
    from requests import PreparedRequest

    _Adapter = HTTPAdapter
else:
    try:
        from customerio.client_base import TCPKeepAliveHTTPAdapter as _Adapter
    except ImportError:  # pragma: no cover - an older client without keep-alive
        _Adapter = HTTPAdapter

__all__ = ["WatchedAdapter", "no_retry_adapter"]


class _WatchedHTTPConnection(HTTPConnection):
    """Names its socket to the watchdog for each request that uses it."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        # A copy: TLS moves the connection into a new socket object and detaches this one
        # before the handshake, which the deadline must cover too.
        watch_socket(sock, copy=True)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:
            # Connected already (pooled, or TLS done): the socket as it is now.
            watch_socket(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    """The same, for HTTPS."""


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedHTTPPool,
    "https": _WatchedHTTPSPool,
}


class WatchedAdapter(_Adapter):
    """The official client's adapter whose connections name their sockets to the watchdog.

    Connections through a SOCKS proxy are not watched: they keep urllib3's per-read
    timeouts only.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        # Only the stock pools are swapped; a SOCKS proxy manager keeps its own.
        if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = _POOLS
        return manager

    def route(
        self,
        request: PreparedRequest,
        *,
        verify: bool | str | None,
        cert: str | tuple[str, str] | None,
        proxies: Mapping[str, str],
    ) -> tuple[HTTPConnectionPool, str]:
        """Where :meth:`send` would send ``request``, for a caller that sends through the
        pool itself: the connection pool (the proxy's when one applies, with ``verify``
        and ``cert`` set on it) and the target its request line names.

        Raises:
            requests.RequestException: The URL or the proxy's is invalid.
            OSError: The CA bundle or the client certificate is not where it is said to be.
        """
        try:
            if hasattr(self, "get_connection_with_tls_context"):
                found = self.get_connection_with_tls_context(
                    request, verify, proxies=proxies, cert=cert
                )
            else:  # requests before 2.32.2, whose send() asked this instead
                found = self.get_connection(request.url or "", dict(proxies))
        except LocationValueError as exc:
            raise InvalidURL(exc) from exc
        # An HTTPConnectionPool (or HTTPS), whatever the stubs say: the pool managers' own.
        pool = cast(HTTPConnectionPool, found)
        self.cert_verify(pool, request.url, verify, cert)  # type: ignore[no-untyped-call]
        return pool, self.request_url(request, proxies)


def no_retry_adapter() -> HTTPAdapter:
    """A :class:`WatchedAdapter` that never retries.

    total=0: urllib3 still wraps a connection error in MaxRetryError, which requests
    turns into its own ConnectionError. No status_forcelist: every status is returned as
    a response, never raised.
    """
    retry = Retry(total=0, raise_on_redirect=False, raise_on_status=False)
    return WatchedAdapter(max_retries=retry)

"""A JSON POST over a requests session, prepared once and sent with each new body through
the session's own urllib3 pool: what ``Session.post`` sends, without its work per request."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    DecodeError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)

from ._adapter import WatchedAdapter
from ._wire import Response

if TYPE_CHECKING:
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.response import BaseHTTPResponse
    from urllib3.util.retry import Retry

__all__ = ["JSON_HEADERS", "MAX_ANSWER_BYTES", "PreparedPost"]

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
MAX_ANSWER_BYTES = 4 << 20
_CHUNK_BYTES = 64 << 10


class PreparedPost:
    """A POST of JSON bodies to one URL, as ``session.post(url, data=body,
    headers=JSON_HEADERS, allow_redirects=False, stream=True)`` would send them, byte for
    byte, for a fraction of the CPU.

    ``Session.post`` merges the session's headers, auth and cookies, reads the environment
    and checks the CA bundle on disk for every request. Here that is done once, by
    requests' own code, on the first :meth:`send`: the request is prepared, the proxies,
    ``verify`` and client certificate are merged as requests merges them, and the session's
    adapter (a :class:`WatchedAdapter`) names the connection pool, its proxy's when one
    applies. Each send then sets only the body and its ``Content-Length``, and posts
    through that pool with the adapter's retries (none) and no redirect followed.

    It is prepared again once the adapter's pool manager lets go of that pool (the session
    was closed, or the pool made way for others): the pool is held weakly, so its
    connections close then, as they would under ``Session.post``. It is also prepared for
    each send while the session's cookie jar holds cookies, as requests would; cookies a
    response sets go into that jar. Failures raise requests' exceptions, as
    ``Session.post`` and reading its streamed reply would. The session's response hooks
    are not called.

    A session whose sending is not requests' own gets ``Session.post`` itself, for every
    batch while that lasts: an adapter the app mounted in place of the
    :class:`WatchedAdapter`, or a test double (``responses``, ``requests-mock``), which
    then sees the batches instead of their going past it to the network.

    Args:
        session: The session whose headers, auth, cookies, proxies, ``verify``, client
            certificate and mounted adapter it uses.
        url: Where to post.
    """

    __slots__ = ("_route", "_session", "_url")

    def __init__(self, session: requests.Session, url: str) -> None:
        self._session = session
        self._url = url
        self._route: _Route | None = None

    def send(self, body: bytes, *, timeout: float, limit: int = MAX_ANSWER_BYTES) -> Response:
        """POST ``body`` once and read the answer, at most ``limit`` bytes of it (decoded);
        a longer answer is left unread and its connection dropped.

        Args:
            body: The JSON body.
            timeout: Seconds for connecting, and for each read.
            limit: The most bytes of the answer's body to read.

        Raises:
            requests.RequestException: No complete answer came (as ``Session.post`` raises).
            OSError: The CA bundle or client certificate is missing.
            urllib3.exceptions.HTTPError: A failure requests passes on as it is.
        """
        if _stood_in_for():
            return self._post_plainly(body, timeout, limit)
        ready = self._ready()
        if ready is None:
            return self._post_plainly(body, timeout, limit)
        route, pool = ready
        headers = route.headers.copy()
        headers["Content-Length"] = str(len(body))
        try:
            reply = pool.urlopen(
                "POST",
                route.target,
                body=body,
                headers=headers,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                retries=route.retries,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                chunked=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            error = _sending_error(exc)
            if error is None:
                raise
            raise error from exc
        found = reply.headers
        if "set-cookie" in found or "set-cookie2" in found:
            jar = self._session.cookies
            extract_cookies_to_jar(jar, route.request, reply)  # type: ignore[no-untyped-call]
        return Response(reply.status, dict(found), _read(reply, limit))

    def _post_plainly(self, body: bytes, timeout: float, limit: int) -> Response:
        """``Session.post`` itself, for a session whose sending is not requests' own: an
        adapter the app mounted, or a test double (``responses``, ``requests-mock``),
        which must see the batch rather than have it go past it to the network."""
        reply = self._session.post(
            self._url,
            data=body,
            headers=JSON_HEADERS,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        )
        try:
            # Not read to the end: closing the reply drops the connection.
            answer, _ = _up_to(reply.iter_content(_CHUNK_BYTES), limit)
        finally:
            reply.close()
        return Response(reply.status_code, dict(reply.headers), answer)

    def _ready(self) -> tuple[_Route, HTTPConnectionPool] | None:
        """The route for the next send, and its pool: prepared again when needed; None
        when the session's adapter is not a :class:`WatchedAdapter` (the app mounted its
        own: ``Session.post`` then sends through it)."""
        route = self._route
        if route is not None and not len(self._session.cookies):
            pool = route.pool()
            if pool is not None:
                return route, pool
        session = self._session
        adapter = session.get_adapter(self._url)
        if not isinstance(adapter, WatchedAdapter):
            return None  # looked at first: Session.post prepares it all again anyway
        # What Session.request does before sending, in the same order.
        request = session.prepare_request(
            requests.Request("POST", self._url, headers=JSON_HEADERS, data=b"")
        )
        found = session.merge_environment_settings(request.url, {}, None, None, None)
        pool, target = adapter.route(
            request, verify=found["verify"], cert=found["cert"], proxies=found["proxies"]
        )
        self._route = _Route(request, pool, target, adapter.max_retries)
        return self._route, pool


def _stood_in_for() -> bool:
    """True while a test double stands in for requests' own sending: ``responses``
    patches ``HTTPAdapter.send``, ``requests-mock`` ``Session.get_adapter``. Looked at for
    each batch (a test may start one after the bridge has sent)."""
    return (
        getattr(HTTPAdapter.send, "__module__", None) != "requests.adapters"
        or getattr(requests.Session.get_adapter, "__module__", None) != "requests.sessions"
    )


class _Route:
    """A request prepared once, and the pool it goes through (held weakly: the pool
    manager's to keep or let go). Holds the credentials (in ``headers``): no repr shows
    them."""

    __slots__ = ("headers", "pool", "request", "retries", "target")

    def __init__(
        self,
        request: requests.PreparedRequest,
        pool: HTTPConnectionPool,
        target: str,
        retries: Retry,
    ) -> None:
        self.request = request
        self.headers: dict[str, str] = dict(request.headers)
        self.pool = weakref.ref(pool)
        self.target = target
        self.retries = retries


def _read(reply: BaseHTTPResponse, limit: int) -> bytes:
    """The answer's body, decoded, at most ``limit`` bytes of it; as requests reads a
    streamed reply (``iter_content``) and closes it."""
    answer, whole = b"", False
    try:
        answer, whole = _up_to(reply.stream(_CHUNK_BYTES, decode_content=True), limit)
    except ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except ReadTimeoutError as exc:
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc
    finally:
        if not whole:
            # Not read to the end, or broken: the connection is dropped, never reused.
            reply.close()
        reply.release_conn()
    return answer


def _up_to(chunks: Iterator[bytes], limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of an answer read in ``chunks``, and whether it was read
    to its end (never more than a chunk past the limit is read)."""
    taken: list[bytes] = []
    size = 0
    for chunk in chunks:
        taken.append(chunk)
        size += len(chunk)
        if size >= limit:
            return b"".join(taken)[:limit], False
    return b"".join(taken), True


def _sending_error(exc: Exception) -> requests.RequestException | None:
    """requests' exception for a failed ``urlopen``, as ``HTTPAdapter.send`` maps it; None
    for one it passes on as it is."""
    if isinstance(exc, (ProtocolError, OSError)):
        return requests.ConnectionError(exc)
    if isinstance(exc, MaxRetryError):
        reason = exc.reason
        if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
            return requests.ConnectTimeout(exc)
        if isinstance(reason, ResponseError):
            return requests.exceptions.RetryError(exc)
        if isinstance(reason, urllib3.exceptions.ProxyError):
            return requests.exceptions.ProxyError(exc)
        if isinstance(reason, urllib3.exceptions.SSLError):
            return requests.exceptions.SSLError(exc)
        return requests.ConnectionError(exc)
    if isinstance(exc, ClosedPoolError):
        return requests.ConnectionError(exc)
    if isinstance(exc, urllib3.exceptions.ProxyError):
        return requests.exceptions.ProxyError(exc)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return requests.exceptions.SSLError(exc)
    if isinstance(exc, ReadTimeoutError):
        return requests.ReadTimeout(exc)
    if isinstance(exc, urllib3.exceptions.InvalidHeader):
        return requests.exceptions.InvalidHeader(exc)
    return None

"""The one HTTP GET every source uses: size cap, whole-fetch deadline, TLS verification, bearer token.

The deadline bounds the whole fetch, bytes included. A socket timeout only bounds each read, so
a target that drips one byte a second would never trip it; instead one watchdog thread shuts
down the socket of every fetch whose deadline has passed, which wakes its blocked read at once.
No scrape thread can therefore outlive its cycle, whatever the target does.
"""
from __future__ import annotations

import heapq
import itertools
import json
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Iterator, Mapping

from urllib.parse import unquote, urlencode

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3 import Timeout
from urllib3.util import make_headers, parse_url
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .files import ConfigError, read_text
from .secrets import REDACT, redact

MAX_TOKEN_BYTES = 65536


class FetchError(Exception):
    """A fetch failed. ``reason`` is a short, low-cardinality label for the error counter. The message
    goes through the redactor here, once: it reaches logs, reports and alerts."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(redact(message))


# ---------------------------------------------------------------- the deadline watchdog


@dataclass(eq=False)
class _Fetch:
    """One in-flight fetch: its deadline and the sockets it has used so far."""

    deadline: float
    socks: list[socket.socket] = field(default_factory=list)
    expired: bool = False
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self.lock:
            self.socks.append(sock)
            if self.expired:  # the deadline passed while this socket was being made
                _shut(sock)

    def finish(self) -> None:
        with self.lock:
            self.done = True

    def expire(self) -> None:
        with self.lock:  # held while cutting, so a finished fetch's kept-alive socket is never cut
            if self.done:
                return
            self.expired = True
            for sock in self.socks:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        # the plain socket's shutdown, also for an SSLSocket: it must not touch the TLS state
        # that the reading thread is using
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """A single daemon thread that expires fetches at their deadlines (a heap, not a timer each)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Fetch]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, f: _Fetch) -> None:
        with self._cond:
            # the thread sleeps until the earliest deadline: wake it only when this one comes sooner
            # (a cycle's fetches share one deadline: one wake-up per cycle, not one per fetch)
            sooner = not self._heap or f.deadline < self._heap[0][0]
            heapq.heappush(self._heap, (f.deadline, next(self._seq), f))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fetch-deadline", daemon=True)
                self._thread.start()
            if sooner:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, f = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            f.expire()


_WATCHDOG = _Watchdog()
_current = threading.local()  # the fetch running on this thread, for the connections it opens


# The socket is recorded when it is made and again when a kept-alive one is reused: http.client
# drops conn.sock once a response says "close", while the response still reads from it.


class _DeadlineMixin:
    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _attach(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:  # a kept-alive connection skips connect()
        _attach(self.sock)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _DeadlineHTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


def _attach(sock: socket.socket | None) -> None:
    f: _Fetch | None = getattr(_current, "fetch", None)
    if f is not None:
        f.attach(sock)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


HOST_POOLS = 4096  # hosts whose idle connections are kept between cycles
CONNECTIONS_PER_HOST = 64  # the scrape pool's size at most: targets that share a host (paths, ports) keep theirs


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections the watchdog can cut; keep-alive is kept."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def new_session() -> requests.Session:
    """A session for scraping: deadline-aware connections, no proxies or netrc from the environment."""
    s = requests.Session()
    s.trust_env = False  # in-cluster scrapes never go through an HTTP(S)_PROXY
    # one kept-alive pool per target host, for every target (requests keeps 10: with more targets each
    # cycle would reconnect to most), with as many connections per host as fetches run at once
    adapter = DeadlineAdapter(pool_connections=HOST_POOLS, pool_maxsize=CONNECTIONS_PER_HOST)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


@contextmanager
def deadline(seconds: float) -> Iterator[_Fetch]:
    """Bound every request this thread makes inside the block, on a ``new_session`` session, to
    ``seconds`` in all; ``expired`` on the yielded object says whether the watchdog cut it."""
    f = _Fetch(time.monotonic() + seconds)
    _current.fetch = f
    _WATCHDOG.watch(f)
    try:
        yield f
    finally:
        with f.lock:
            f.done = True
        _current.fetch = None


def cut_at(sock: socket.socket, seconds: float) -> _Fetch:
    """Shut ``sock`` ``seconds`` from now unless the returned handle's ``finish()`` comes first: a total
    deadline on a server's read of a request, which a socket timeout (per read) is not."""
    f = _Fetch(time.monotonic() + seconds)
    f.attach(sock)
    _WATCHDOG.watch(f)
    return f


# ---------------------------------------------------------------- the memory bodies may hold


class BodyBudget:
    """The bytes every body being read or parsed may hold together, beyond a small allowance each.

    A fetch holds up to ``free`` bytes of its own (an engine's page is a few hundred kB); past that,
    each further byte comes from ``total``, shared by all. A fetch that needs more than is left waits,
    until its deadline at most, and then fails with reason "budget": so the number of fetches times
    ``free`` plus ``total`` bounds what bodies hold, whatever mix of bodies the targets send.
    """

    def __init__(self, total: int, free: int) -> None:
        self.total, self.free = total, free
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    def lease(self, deadline: float) -> "Lease":
        return Lease(self, deadline)

    def _take(self, n: int, deadline: float) -> bool:
        with self._cond:
            while self._used + n > self.total:
                left = deadline - time.monotonic()
                if left <= 0 or n > self.total:
                    return False
                self._cond.wait(left)
            self._used += n
            return True

    def _give(self, n: int) -> None:
        if n:
            with self._cond:
                self._used -= n
                self._cond.notify_all()


class Lease:
    """What one fetch holds of a BodyBudget: grows as its body does, and is given back on ``release``."""

    def __init__(self, budget: BodyBudget, deadline: float) -> None:
        self.budget, self.deadline, self.held = budget, deadline, 0

    def cover(self, size: int) -> None:
        """Hold enough for a body of ``size`` bytes, or raise FetchError("budget")."""
        need = max(0, size - self.budget.free) - self.held
        if need > 0:
            if not self.budget._take(need, self.deadline):
                raise FetchError("budget", f"the {self.budget.total >> 20} MiB that bodies in flight may hold together "
                                           f"stayed taken by other large bodies until the deadline")
            self.held += need

    def release(self) -> None:
        self.budget._give(self.held)
        self.held = 0

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------- tokens


def read_token(path: str | None) -> str | None:
    """The bearer token in ``path``, re-read on every fetch so rotation works.

    A trailing line break is stripped. Anything else that cannot go into an HTTP header is an
    error whose message never contains the token: requests would otherwise echo the header.
    """
    if not path:
        return None
    try:  # a regular file only: a FIFO would block the scrape worker that opened it for good
        token = read_text(path, MAX_TOKEN_BYTES, "bearer token file").strip()
    except ConfigError as e:
        raise FetchError("token", f"bearer token file {e}") from None
    bad = next((i for i, ch in enumerate(token) if not 0x20 < ord(ch) < 0x7F), None)
    if bad is not None:
        raise FetchError("token", f"bearer token file {path} holds a line break, space, control or non-ASCII "
                                  f"character at offset {bad}; a token is one line of printable ASCII")
    REDACT.learn(token)  # whatever echoes the header back (a proxy's error page) is masked
    return token or None


# ---------------------------------------------------------------- the fetch


def fetch_text(
    session: requests.Session,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    verify: bool | str = True,
    bearer_token_file: str | None = None,
    form: Mapping[str, str] | None = None,
    accept: str = "text/plain;version=0.0.4",
    lease: Lease | None = None,
) -> str:
    """GET ``url`` (POST ``form``, URL-encoded, when given) and return its body as text, or raise FetchError.

    ``timeout`` bounds the whole fetch (connect, headers and every byte of the body) when
    ``session`` comes from ``new_session``; with another session it bounds each read.
    """
    headers = {"Accept": accept, "Accept-Encoding": "gzip"}
    token = read_token(bearer_token_file)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    payload = None
    if form is not None:
        payload = urlencode(form).encode("ascii")
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    with deadline(timeout) as f:
        try:
            body = _get(session, url, headers, timeout, max_bytes, verify, payload, lease)
        except FetchError:
            if f.expired:
                raise FetchError("timeout", f"not complete within {timeout:g}s") from None
            raise
    if f.expired:  # a body read until the server closed may look complete when it was cut
        raise FetchError("timeout", f"not complete within {timeout:g}s")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchError("malformed", "body is not UTF-8 text") from None


def _get(session: requests.Session, url: str, headers: dict[str, str], timeout: float, max_bytes: int,
         verify: bool | str, payload: bytes | None = None, lease: Lease | None = None) -> bytearray:
    """One GET on the session's urllib3 pool for the URL, without requests' per-request machinery
    (preparing, merging settings, hooks, cookies), which cost more CPU than parsing the body."""
    parsed = parse_url(url)
    if parsed.auth:  # user:password@ in the URL is HTTP basic auth, as requests would send it
        headers = {**headers, **make_headers(basic_auth=unquote(parsed.auth))}
    tls: dict[str, Any] = {}
    if parsed.scheme == "https":
        tls = ({"cert_reqs": "CERT_NONE"} if verify is False else
               {"cert_reqs": "CERT_REQUIRED", "ca_certs": verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH})
    adapter = session.get_adapter(url)
    assert isinstance(adapter, HTTPAdapter)
    try:
        pool = adapter.poolmanager.connection_from_host(parsed.host, parsed.port, parsed.scheme, pool_kwargs=tls)
        resp = pool.urlopen("GET" if payload is None else "POST", parsed.request_uri, body=payload, headers=headers,
                            retries=False, redirect=False,
                            timeout=Timeout(connect=timeout, read=timeout), preload_content=False,
                            assert_same_host=False)
        try:
            if resp.status != 200:
                # what the body is and its length, never its text: an error page may reflect the request's
                # Authorization header. A Prometheus API error's own message is kept (it names the query's fault)
                start = resp.read(4096, decode_content=True)
                raise FetchError("http_status", f"HTTP {resp.status} {_phrase(resp.status)}: "
                                                f"{described(start, resp.headers.get('Content-Length'))}")
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError("too_large", f"body of {int(declared)} bytes exceeds the {max_bytes} byte cap")
            body = bytearray()  # grown in place: no list of chunks and a joined copy beside it
            for chunk in resp.stream(65536, decode_content=True):  # decoded: the cap also bounds gzip expansion
                if len(body) + len(chunk) > max_bytes:
                    raise FetchError("too_large", f"body exceeds the {max_bytes} byte cap")
                if lease is not None:
                    lease.cover(len(body) + len(chunk))
                body += chunk
            return body
        finally:
            resp.release_conn()
    except FetchError:
        raise
    except u3.SSLError as e:
        raise FetchError("tls", f"TLS error: {_first_line(e)}") from None
    except (u3.NewConnectionError, u3.ProtocolError, u3.MaxRetryError) as e:  # before: it subclasses ConnectTimeout
        if "timed out" in str(e).lower():
            raise FetchError("timeout", f"timed out after {timeout:g}s") from None
        raise FetchError("refused", _connection_failed(e)) from None
    except u3.ConnectTimeoutError:
        raise FetchError("timeout", f"connect timed out after {timeout:g}s") from None
    except u3.ReadTimeoutError:
        raise FetchError("timeout", f"no response within {timeout:g}s") from None
    except (u3.HTTPError, requests.exceptions.RequestException, ValueError) as e:
        raise FetchError("other", _first_line(e)) from None
    except OSError as e:  # a socket cut by the watchdog can surface as a bare OSError
        raise FetchError("other", f"{type(e).__name__}: {e.strerror or e}") from None


# urllib3 names its connection objects in its messages: "_DeadlineHTTPConnection(host=..., port=...): "
# or "<...HTTPConnection object at 0x7f...>: ", which say nothing to an operator
_CONNECTION_REPR = re.compile(r"[\w.]*(?:Connection|Pool)\(host=[^)]*\):?\s*|<[\w.]+ object at 0x[0-9a-f]+>:?\s*")


def _phrase(status: int) -> str:
    try:  # the standard phrase, not the server's: a status line is the server's text too
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def described(start: bytes, length: str | None = None) -> str:
    """What an answer's body is, from its first bytes, without a word of it: its kind and size. A Prometheus
    API error (``{"status":"error","errorType":...,"error":...}``) says its error, redacted."""
    size = int(length) if length and length.isdigit() else len(start)
    text = start.decode("utf-8", "replace").lstrip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            kind = doc.get("errorType") if isinstance(doc.get("errorType"), str) else "error"
            return " ".join(f"{str(kind)[:40]}: {doc['error'][:200]}".split())
    kind = ("an empty body" if not text else "an HTML page" if text.startswith("<") else
            "JSON" if text[0] in "{[" else "text")
    return kind if not text else f"{kind} of {size:,} bytes"


def _first_line(e: BaseException) -> str:
    s = _CONNECTION_REPR.sub("", str(e)).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def _connection_failed(e: BaseException) -> str:
    """A failed connection in words: refused, reset, a name that does not resolve, or what the OS said."""
    text = _first_line(e)
    resolve = re.search(r"Failed to resolve '([^']*)'(?: \(\[Errno -?\d+\] ([^)]*)\))?", text)
    if resolve:
        return f"cannot resolve the host name {resolve.group(1)}" + (f": {resolve.group(2)}" if resolve.group(2) else "")
    errno = re.search(r"\[Errno -?\d+\] ([^)'\]]+)", text)
    if errno:
        return errno.group(1).strip().lower().rstrip(".")  # "connection refused", "no route to host"
    if "RemoteDisconnected" in text or "without response" in text:
        return "closed the connection without an answer"
    if "reset by peer" in text:
        return "connection reset"
    return text

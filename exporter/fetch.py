"""The one HTTP GET every source uses: size cap, timeout, TLS verification, bearer token."""
from __future__ import annotations

import time

import requests


class FetchError(Exception):
    """A fetch failed. ``reason`` is a short, low-cardinality label for the error counter."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


def fetch_text(
    session: requests.Session,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    verify: bool | str = True,
    bearer_token_file: str | None = None,
) -> str:
    """GET ``url`` and return its body as text, or raise FetchError.

    ``timeout`` bounds the whole fetch, not each socket read, so a target that drips bytes
    cannot hold a cycle open.
    """
    deadline = time.monotonic() + timeout
    headers = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"}
    try:
        token = read_token(bearer_token_file)
    except OSError as e:
        raise FetchError("token", f"cannot read bearer token file: {e.strerror}") from None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with session.get(url, headers=headers, timeout=(min(timeout, 3.0), timeout), stream=True,
                         verify=verify, allow_redirects=False) as resp:
            if resp.status_code != 200:
                raise FetchError("http_status", f"HTTP {resp.status_code}")
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError("too_large", f"body of {int(declared)} bytes exceeds the {max_bytes} byte cap")
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("too_large", f"body exceeds the {max_bytes} byte cap")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"body not complete after {timeout:g}s")
                chunks.append(chunk)
            body = b"".join(chunks)
    except FetchError:
        raise
    except requests.exceptions.SSLError as e:
        raise FetchError("tls", f"TLS error: {_first_line(e)}") from None
    except requests.exceptions.ConnectTimeout:
        raise FetchError("timeout", f"connect timed out after {min(timeout, 3.0):g}s") from None
    except requests.exceptions.ReadTimeout:
        raise FetchError("timeout", f"no response within {timeout:g}s") from None
    except requests.exceptions.ConnectionError as e:
        text = str(e)
        if "timed out" in text.lower():
            raise FetchError("timeout", f"timed out after {timeout:g}s") from None
        raise FetchError("refused", f"connection failed: {_first_line(e)}") from None
    except requests.exceptions.RequestException as e:
        raise FetchError("other", _first_line(e)) from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchError("malformed", "body is not UTF-8 text") from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__

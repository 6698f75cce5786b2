"""One redactor for everything fleetwatch writes: logs, /metrics, reports, Alertmanager posts, the live view.

Two rules. A URL never keeps its ``user:password@`` (everything up to the authority's last ``@`` goes,
so an unencoded ``@`` in a password takes none of it along). And every secret fleetwatch knows, the
passwords of its configured URLs (as written, percent-decoded, and as the base64 of a basic-auth
header) and every bearer token it has read, is replaced wherever it appears: an error message that
echoes a URL or a header cannot carry it out.
"""
from __future__ import annotations

import base64
import logging
import re
import threading
from typing import Iterable
from urllib.parse import unquote

MASK = "<redacted>"
MIN_SECRET = 4  # shorter values (a user named "a") would mask ordinary words
_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)([^/?#\s\"'<>]*@)")


def redact_url(url: str) -> str:
    """``url`` without ``user:password@``."""
    return _URL.sub(r"\1", url)


def userinfo(url: str) -> str | None:
    """The ``user:password`` of ``url`` as written (up to the authority's last ``@``), or None."""
    m = _URL.match(url.strip())
    return m.group(2)[:-1] if m else None


class Redactor:
    """The secrets learned so far, and ``__call__`` that masks them and URLs' userinfo in a text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def learn(self, *secrets: str | None) -> None:
        found = {s for s in secrets if s and len(s) >= MIN_SECRET}
        with self._lock:
            new = found - set(self._secrets)
            if new:  # longest first: a secret that contains another is masked whole
                self._secrets = tuple(sorted(set(self._secrets) | new, key=len, reverse=True))

    def learn_url(self, url: str) -> None:
        """The userinfo of ``url``: the password, the pair, decoded, and as a basic-auth header carries it."""
        info = userinfo(url)
        if not info:
            return
        user, _, password = info.partition(":")
        pairs = {info, unquote(info)}
        self.learn(*pairs, password, unquote(password),
                   *(base64.b64encode(p.encode("utf-8", "replace")).decode("ascii") for p in pairs))
        if not password:  # a token written as the user part alone
            self.learn(user, unquote(user))

    def learn_urls(self, urls: Iterable[str]) -> None:
        for u in urls:
            self.learn_url(u)

    def __call__(self, text: str) -> str:
        if "://" in text:
            text = _URL.sub(r"\1", text)
        for s in self._secrets:
            if s in text:
                text = text.replace(s, MASK)
        return text


REDACT = Redactor()  # process-wide: a secret is learned where it is read, masked wherever it would be written


def redact(text: str) -> str:
    return REDACT(text)


class RedactingFormatter(logging.Formatter):
    """Log lines through the redactor, and one line each: a message's own line breaks and control
    characters are escaped (a value from a target or the environment cannot forge a log line)."""

    def format(self, record: logging.LogRecord) -> str:
        from .files import one_line

        record.msg, record.args = one_line(record.getMessage()), None
        return redact(super().format(record))


def redact_logging(root: logging.Logger | None = None) -> None:
    """Put every handler of ``root`` (the root logger) behind the redactor, keeping its format."""
    for h in (root or logging.getLogger()).handlers:
        fmt = h.formatter
        h.setFormatter(RedactingFormatter(fmt._fmt if fmt is not None else None,
                                          fmt.datefmt if fmt is not None else None))

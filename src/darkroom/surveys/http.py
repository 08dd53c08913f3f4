"""Polite HTTP for survey archives: retries with backoff, timeouts, a concurrency limit, a rate
limit, and optional credentials that are never printed, logged or stored.

One :class:`HttpClient` is shared by the threads of a download: each thread gets its own
``requests.Session`` (sessions are not thread-safe), a semaphore bounds the requests in flight,
and a token bucket spaces their starts. Transient failures (timeouts, refused or reset
connections, HTTP 5xx and 429) are retried with exponential backoff and jitter by tenacity;
other HTTP errors are final. The reply body is returned byte for byte.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import requests
import tenacity

from darkroom.errors import ConfigError, DarkroomError
from darkroom.surveys.settings import HttpConfig

__all__ = [
    "Credentials",
    "DownloadError",
    "HttpClient",
    "HttpConfig",
    "RateLimiter",
    "Reply",
    "load_credentials",
]

log = logging.getLogger(__name__)

USER_AGENT = "darkroom survey client (+https://github.com/darkroom)"


class DownloadError(DarkroomError):
    """A request failed for good (after its retries); the reason names the status or the timeout."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password for HTTP basic authentication; ``repr`` never shows the password."""

    user: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=***)"

    __str__ = __repr__


def load_credentials(
    *, env_prefix: str = "DARKROOM_IRSA", file: str | Path | None = None
) -> Credentials | None:
    """Credentials from ``<env_prefix>_USER``/``<env_prefix>_PASSWORD``, else from ``file``, else None.

    The file holds ``user:password`` on its first line and must not be readable by group or
    others (mode 0600), like ``~/.netrc``; otherwise :class:`ConfigError` says so, without
    ever quoting the file's content.
    """
    user = os.environ.get(f"{env_prefix}_USER")
    password = os.environ.get(f"{env_prefix}_PASSWORD")
    if user and password:
        return Credentials(user, password)
    if file is None:
        return None
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"credentials file {path} not found")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"credentials file {path} is readable by others (mode {mode:o}); chmod 600 it")
    first = path.read_text().splitlines()[0].strip() if path.stat().st_size else ""
    if ":" not in first:
        raise ConfigError(f"credentials file {path}: first line must be user:password")
    user, password = first.split(":", 1)
    return Credentials(user.strip(), password.strip())


class RateLimiter:
    """At most ``rate_per_s`` starts per second across threads (evenly spaced, no bursts)."""

    def __init__(self, rate_per_s: float) -> None:
        self.interval = 1.0 / rate_per_s
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        delay = start - now
        if delay > 0:
            time.sleep(delay)


@dataclass(frozen=True)
class Reply:
    """One archive answer: the body as sent, the final status, how many attempts it took."""

    content: bytes
    status: int
    attempts: int
    url: str
    seconds: float


class _Transient(Exception):
    """A failure worth another attempt (carries the one-line reason)."""


class HttpClient:
    """Thread-safe GET with retries, timeouts, a concurrency bound and a rate limit."""

    def __init__(self, config: HttpConfig, *, credentials: Credentials | None = None) -> None:
        self.config = config
        self._auth = (credentials.user, credentials.password) if credentials else None
        self._local = threading.local()
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._rate = RateLimiter(config.rate_per_s)
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        # proxies from the environment, read once: requests reads them (and ~/.netrc) on every
        # request otherwise, which costs more than a small reply
        self._proxies = urllib.request.getproxies()

    @property
    def has_credentials(self) -> bool:
        return self._auth is not None

    def _session(self) -> requests.Session:
        sess = getattr(self._local, "session", None)
        if sess is None:
            sess = requests.Session()
            sess.headers["User-Agent"] = USER_AGENT
            sess.trust_env = False
            sess.proxies.update(self._proxies)
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
            sess.mount("http://", adapter)
            sess.mount("https://", adapter)
            self._local.session = sess
            with self._sessions_lock:
                self._sessions.append(sess)
        return sess

    def _once(self, url: str, params: dict | None, ok_status: tuple[int, ...]) -> tuple[bytes, int]:
        self._rate.wait()
        with self._slots:
            try:
                resp = self._session().get(
                    url, params=params, timeout=self.config.timeout_s, auth=self._auth, stream=False
                )
            except requests.Timeout as exc:
                raise _Transient(f"timed out after {self.config.timeout_s:g} s") from exc
            except requests.ConnectionError as exc:
                # the exception text can carry the URL (never credentials: they go in a header)
                raise _Transient(f"connection failed: {exc.__class__.__name__}") from exc
            content, status = resp.content, resp.status_code
        if status in ok_status:
            return content, status
        if status >= 500 or status == 429:
            raise _Transient(f"HTTP {status}")
        raise DownloadError(f"HTTP {status} {resp.reason or ''}".strip(), status=status)

    def get(self, url: str, *, params: dict | None = None, ok_status: tuple[int, ...] = (200,)) -> Reply:
        """GET ``url`` with retries; the reply body byte for byte.

        Raises
        ------
        DownloadError
            A final HTTP error (e.g. 404), or transient failures on every attempt; the reason
            says which and how many attempts were made.
        """
        cfg = self.config
        t0 = time.perf_counter()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(cfg.max_attempts),
            wait=tenacity.wait_exponential_jitter(
                multiplier=cfg.backoff_s, max=cfg.backoff_max_s, jitter=cfg.backoff_s
            ),
            retry=tenacity.retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            content, status = retrying(self._once, url, params, ok_status)
        except _Transient as exc:
            n = cfg.max_attempts
            raise DownloadError(f"{exc} ({n} attempt{'s' if n > 1 else ''})", attempts=n) from None
        n = int(retrying.statistics.get("attempt_number", 1))
        return Reply(content, status, n, url, time.perf_counter() - t0)

    def close(self) -> None:
        with self._sessions_lock:
            for sess in self._sessions:
                sess.close()
            self._sessions.clear()

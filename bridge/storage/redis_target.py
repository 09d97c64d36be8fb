"""Connecting to a `redis://` URL, shared by the Redis store and the Redis broker.

`RedisTarget` parses the URL (the `prefix` option names the keys; every other query
option goes to redis-py), builds a client on a bounded pool that never retries a
command by itself, and shows the URL without its password. `redis_errors` turns
redis-py's errors into `StorageUnavailable` saying what failed. Nothing here knows a
key of the store or of the broker: each owns its own names under the prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bridge.errors import InvalidInput, StorageUnavailable

__all__ = ["RedisTarget", "as_text", "redis_errors"]

_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Defaults for the connection unless the URL's query names them (redis-py parses those).
_CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_timeout": 2.0,
    "socket_connect_timeout": 2.0,
    "health_check_interval": 15,
}
# Query options passed on to redis-py (besides our own `prefix`).
_URL_OPTIONS = frozenset(URL_QUERY_ARGUMENT_PARSERS) | {
    "client_name",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
}
_POOL_SIZE = 64
_POOL_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed `redis://` store URL: where to connect, the key prefix, and options."""

    client_url: str
    prefix: str
    shown: str
    options: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Split off `prefix`; every other query option goes to redis-py unchanged."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise InvalidInput(f"bad store URL {_mask(url)!r}: use redis://host:port/db")
        if not re.fullmatch(r"/?|/\d{1,5}", parts.path):
            raise InvalidInput(
                f"bad store URL {_mask(url)!r}: the path is the database number, as in /0"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        prefix = query.pop("prefix", "bridge")
        if not _PREFIX.fullmatch(prefix):
            raise InvalidInput(
                f"bad redis key prefix {prefix[:70]!r}: use 1-64 of A-Z a-z 0-9 _ . -"
            )
        unknown = sorted(set(query) - _URL_OPTIONS)
        if unknown:
            raise InvalidInput(
                f"bad store URL {_mask(url)!r}: unknown option {unknown[0]!r} (known: prefix, "
                f"{', '.join(sorted(_URL_OPTIONS))})"
            )
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        try:
            parse_url(client_url)  # bad db numbers and option values fail here, not later
        except ValueError as exc:
            raise InvalidInput(f"bad store URL {_mask(url)!r}: {exc}") from None
        return cls(client_url, prefix, _mask(url), query)

    def connect(self, name: str, *, max_connections: int = _POOL_SIZE) -> aioredis.Redis:
        """A client on a bounded pool: a caller waits at most `_POOL_WAIT_S` for a
        connection; commands are never retried by the client (see the module doc).
        `name` shows in Redis's `CLIENT LIST`, to tell instances apart."""
        kwargs: dict[str, Any] = {
            k: v for k, v in _CLIENT_DEFAULTS.items() if k not in self.options
        }
        kwargs.setdefault("client_name", f"bridge:{self.prefix}:{name}")
        pool = aioredis.BlockingConnectionPool.from_url(
            self.client_url,
            max_connections=max_connections,
            timeout=_POOL_WAIT_S,
            retry=Retry(NoBackoff(), 0),
            **kwargs,
        )
        return aioredis.Redis(connection_pool=pool)


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def redis_errors(where: str, what: str) -> Iterator[None]:
    """Turn redis-py's errors into `StorageUnavailable` saying what failed and why."""
    try:
        yield
    except redis.exceptions.TimeoutError as exc:
        raise StorageUnavailable(
            f"redis at {where} did not answer in time ({what}); a write may or may not "
            "have happened: retry with the same Idempotency-Key"
        ) from exc
    except redis.exceptions.ConnectionError as exc:
        raise StorageUnavailable(f"cannot reach redis at {where} ({what}): {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        text = str(exc)
        # redis-py strips the error code from the text of the classes it knows.
        if isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in text:
            raise StorageUnavailable(
                f"redis at {where} is out of memory (maxmemory reached); nothing was "
                f"stored ({what})"
            ) from exc
        if isinstance(exc, redis.exceptions.ReadOnlyError) or "READONLY" in text:
            raise StorageUnavailable(
                f"redis at {where} is a read-only replica; point the store at the primary"
            ) from exc
        raise StorageUnavailable(f"redis at {where} refused {what}: {text[:200]}") from exc
    except redis.exceptions.RedisError as exc:
        raise StorageUnavailable(f"redis at {where} failed ({what}): {exc}") from exc


def as_text(value: object) -> str:
    """A reply of a client without `decode_responses` (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)

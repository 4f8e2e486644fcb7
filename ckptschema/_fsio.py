"""How remote operations run: their settings, the fsspec filesystem of a URL, and the event loop they run on.

The settings come from environment variables read when each remote operation starts:
``CKPTSCHEMA_REMOTE_CONCURRENCY`` (requests in flight, default 16) and
``CKPTSCHEMA_REMOTE_TIMEOUT`` (the seconds one request may take, default 60).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ._errors import CkptSchemaError, FormatError

__all__ = [
    "ENV_CONCURRENCY",
    "ENV_TIMEOUT",
    "Settings",
    "discard",
    "discards",
    "filesystem",
    "gather",
    "is_async",
    "no_answer",
    "run",
    "settings",
]

T = TypeVar("T")

ENV_CONCURRENCY = "CKPTSCHEMA_REMOTE_CONCURRENCY"
ENV_TIMEOUT = "CKPTSCHEMA_REMOTE_TIMEOUT"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How remote operations run: requests in flight, and the deadline of each request in seconds."""

    concurrency: int = 16
    timeout: float = 60.0


def settings() -> Settings:
    """The settings from ``CKPTSCHEMA_REMOTE_CONCURRENCY`` and ``CKPTSCHEMA_REMOTE_TIMEOUT`` (or the defaults).

    Example:
        >>> settings()
        Settings(concurrency=16, timeout=60.0)
    """
    default = Settings()
    raw_n, raw_t = os.environ.get(ENV_CONCURRENCY, "").strip(), os.environ.get(ENV_TIMEOUT, "").strip()
    try:
        concurrency = int(raw_n) if raw_n else default.concurrency
        ok = concurrency >= 1
    except ValueError:
        ok = False
    if not ok:
        raise CkptSchemaError(
            f"{ENV_CONCURRENCY}={raw_n!r}: expected a whole number of requests in flight, at least 1 "
            f"(default {default.concurrency}); set it to e.g. 32 or unset it"
        )
    try:
        timeout = float(raw_t) if raw_t else default.timeout
        ok = 0 < timeout < float("inf")
    except ValueError:
        ok = False
    if not ok:
        raise CkptSchemaError(
            f"{ENV_TIMEOUT}={raw_t!r}: expected the seconds one request may take, more than 0 "
            f"(default {default.timeout:g}); set it to e.g. 120 or unset it"
        )
    return Settings(concurrency, timeout)


def filesystem(url: str, concurrency: int) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as e:
        raise FormatError(f"{url}: remote URLs need fsspec ({e}); install it with: pip install 'ckptschema[s3]'") from e
    options: dict[str, Any] = {}
    protocol = url.split("://", 1)[0]
    if protocol in ("s3", "s3a"):  # a connection per request in flight (botocore's pool holds 10)
        configured = dict(fsspec.config.conf.get(protocol, {}).get("config_kwargs", {}))
        pool = max(int(configured.get("max_pool_connections", 10)), concurrency)
        options["config_kwargs"] = {**configured, "max_pool_connections": pool}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:  # an unknown protocol, or its package missing
        raise FormatError(f"{url}: {e}") from e


def is_async(fs: Any) -> bool:
    from fsspec.asyn import AsyncFileSystem

    return isinstance(fs, AsyncFileSystem) and getattr(fs, "loop", None) is not None


def run(fs: Any, coroutine: Coroutine[Any, Any, T], grace: float) -> T:
    """Run `coroutine` on the filesystem's event loop and wait for it.

    When this thread is interrupted (``KeyboardInterrupt``), the coroutine is cancelled and
    given up to `grace` seconds to clean up (abort an upload) before the interrupt goes on.
    """
    finished = threading.Event()

    async def wrapped() -> T:
        try:
            return await coroutine
        finally:
            finished.set()

    future = asyncio.run_coroutine_threadsafe(wrapped(), fs.loop)
    try:
        while not future.done():  # short waits, so that a signal reaches this thread
            concurrent.futures.wait([future], timeout=1.0)
        return future.result()
    except BaseException:
        if not future.done():
            future.cancel()
            finished.wait(grace)
        raise


async def gather(calls: Sequence[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    """Await every call, at most `concurrency` at once; the first failure cancels the rest."""
    slots = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[None]]) -> None:
        async with slots:
            await call()

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def no_answer(url: str, timeout: float, doing: str) -> str:
    return (
        f"{url}: {doing} (no answer from the store within {timeout:g} s; is it running and reachable? "
        f"for a slow one raise {ENV_TIMEOUT})"
    )


def discard(out: Any) -> None:
    out.discard()
    out.closed = True  # so that closing it, or garbage collection, does not complete the upload


def discards(out: Any) -> bool:
    from fsspec.spec import AbstractBufferedFile

    return isinstance(out, AbstractBufferedFile) and type(out).discard is not AbstractBufferedFile.discard

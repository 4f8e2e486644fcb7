"""S3 through s3fs: ranged GETs pinned to one object version, and multipart uploads that appear whole.

Every call goes through ``S3FileSystem._call_s3``, so the store's settings (endpoint,
credentials, ``s3_additional_kwargs`` such as SSE keys or ``RequestPayer``) apply as for any
s3fs call. The coroutines here run on the filesystem's event loop; `_remote` runs them, with
their concurrency and deadline.

- A read names the version it must find: ``VersionId`` where the bucket is versioned (the
  version stays readable after an overwrite, so the load goes on), and ``IfMatch`` with the
  ETag always; the response's ETag and total size are checked too, for stores that ignore
  ``If-Match``. A read that finds another version raises `CheckpointChangedError`.
- An upload of more than one part is our own multipart upload: parts uploaded concurrently,
  built only as a slot frees (memory about concurrency x part size), and on any failure
  (an exception, a deadline, ``KeyboardInterrupt``, cancellation) the upload is aborted.
  After a successful upload, incomplete uploads of the same key that no save has touched for
  `stale_after` seconds (left by killed saves) are aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

from ._errors import CheckpointChangedError

__all__ = [
    "PART_SIZE",
    "abort_stale",
    "compose",
    "delete",
    "describe",
    "get_range",
    "is_s3",
    "pin",
    "stale_after",
    "upload",
]

#: Bytes of each part of a multipart upload (S3 needs at least 5 MiB but for the last part).
PART_SIZE = 16 << 20
#: S3 allows at most this many parts; larger objects get larger parts.
MAX_PARTS = 10_000
#: An incomplete upload of a key is left alone until no part of it was uploaded for this long
#: (or twice the request deadline, if longer): a running save uploads a part within each deadline.
STALE_FLOOR_S = 3600.0


def is_s3(fs: Any) -> bool:
    """Whether `fs` is an s3fs filesystem (the one store written with our own multipart uploads)."""
    return hasattr(fs, "_call_s3") and hasattr(fs, "split_path")


def pin(info: dict[str, Any]) -> dict[str, str]:
    """The request arguments that pin a GET to the object version `info` describes.

    Example:
        >>> pin({"ETag": '"abc"', "VersionId": None, "size": 3})
        {'IfMatch': '"abc"'}
    """
    out: dict[str, str] = {}
    if info.get("ETag"):
        out["IfMatch"] = info["ETag"]
    version = info.get("VersionId")
    if version and version != "null":
        out["VersionId"] = version
    return out


def _code(error: BaseException) -> str | None:
    """The S3 error code behind `error` (s3fs translates ClientErrors and keeps them as the cause)."""
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return None
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error_info = response.get("Error", {})
            code = error_info.get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return str(code) if code else (str(status) if status else None)
        seen = seen.__cause__ or seen.__context__
    return None


_CHANGED_CODES = {"PreconditionFailed", "412", "NoSuchKey", "NoSuchVersion", "404"}


async def get_range(fs: Any, path: str, start: int, end: int, pinned: dict[str, str], size: int, url: str) -> bytes:
    """Bytes ``[start, end)`` of the object version `pinned`, or `CheckpointChangedError`."""
    bucket, key, _ = fs.split_path(path)
    try:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **pinned)
    except Exception as e:
        if isinstance(e, FileNotFoundError) or _code(e) in _CHANGED_CODES:
            raise _changed(url, pinned, "no object" if isinstance(e, FileNotFoundError) else "another version") from e
        raise
    try:
        etag, total = response.get("ETag"), response.get("ContentRange", "").rpartition("/")[2]
        if ("IfMatch" in pinned and etag and etag != pinned["IfMatch"]) or (total.isdigit() and int(total) != size):
            raise _changed(url, pinned, f"ETag {etag}, {total} bytes")
        data: bytes = await response["Body"].read()
    finally:
        response["Body"].close()
    return data


def describe(pinned: dict[str, str]) -> str:
    """The version `pinned` names, for messages.

    Example:
        >>> describe({"IfMatch": '"abc"', "VersionId": "v1"})
        'ETag "abc", VersionId v1'
    """
    return ", ".join(f"{'ETag' if k == 'IfMatch' else k} {v}" for k, v in pinned.items())


def _changed(url: str, pinned: dict[str, str], found: str) -> CheckpointChangedError:
    return CheckpointChangedError(
        f"{url}: the object was replaced while being read (opened as {describe(pinned)}; found {found}); "
        f"nothing read from it is used: load it again"
    )


def part_size(total: int) -> int:
    """The part size for an object of `total` bytes: `PART_SIZE`, or more to stay within `MAX_PARTS`.

    Example:
        >>> part_size(100 << 20) == PART_SIZE, part_size(400 << 30) >> 20
        (True, 41)
    """
    return max(PART_SIZE, math.ceil(total / MAX_PARTS / (1 << 20)) << 20)


def parts(pieces: Sequence[memoryview], size: int) -> Iterator[io.BytesIO]:
    """The concatenation of `pieces` cut into `size`-byte parts (the last one shorter), built one at a time.

    Parts are file objects: aiohttp sends a large ``bytes`` body from the event loop thread.
    """
    part, filled = io.BytesIO(), 0
    for piece in pieces:
        done = 0
        while done < len(piece):
            take = min(size - filled, len(piece) - done)
            part.write(piece[done : done + take])
            done, filled = done + take, filled + take
            if filled == size:
                part.seek(0)
                yield part
                part, filled = io.BytesIO(), 0
    if filled:
        part.seek(0)
        yield part


async def upload(fs: Any, path: str, pieces: Sequence[memoryview], concurrency: int, timeout: float) -> None:
    """Write the concatenation of `pieces` as one object: one PUT, or a multipart upload aborted on failure."""
    bucket, key, _ = fs.split_path(path)
    total = sum(len(p) for p in pieces)
    size = part_size(total)
    if total <= size:
        (body,) = parts(pieces, size) if total else [io.BytesIO()]
        await asyncio.wait_for(fs._call_s3("put_object", Bucket=bucket, Key=key, Body=body), timeout)
        return
    created = await asyncio.wait_for(fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key), timeout)
    upload_id = created["UploadId"]
    try:
        done = await _upload_parts(fs, bucket, key, upload_id, parts(pieces, size), concurrency, timeout)
        await asyncio.wait_for(
            fs._call_s3(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            ),
            timeout,
        )
    except BaseException:
        await _abort(fs, bucket, key, upload_id, timeout)
        raise


async def compose(fs: Any, path: str, parts: Sequence[tuple[Any, ...]], concurrency: int, timeout: float) -> None:
    """Write one object from `parts` in order with one multipart upload, aborted on any failure.

    A part is ``("copy", source_path, start, end)``, bytes ``[start, end)`` of another object
    copied by the store (``UploadPartCopy``), or ``("data", build)``, whose bytes ``build()``
    returns (called on a worker thread when a slot is free: it may read other objects).
    Up to `concurrency` parts are in flight; every part but the last must hold 5 MiB.
    """
    bucket, key, _ = fs.split_path(path)
    created = await asyncio.wait_for(fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key), timeout)
    upload_id = created["UploadId"]
    slots = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task[dict[str, Any]]] = []

    async def one(number: int, part: tuple[Any, ...]) -> dict[str, Any]:
        try:
            if part[0] == "copy":
                source_bucket, source_key, _ = fs.split_path(part[1])
                out = await asyncio.wait_for(
                    fs._call_s3(
                        "upload_part_copy",
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": source_bucket, "Key": source_key},
                        CopySourceRange=f"bytes={part[2]}-{part[3] - 1}",
                    ),
                    timeout,
                )
                return {"PartNumber": number, "ETag": out["CopyPartResult"]["ETag"]}
            body = io.BytesIO(await asyncio.to_thread(part[1]))
            out = await asyncio.wait_for(
                fs._call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body),
                timeout,
            )
            return {"PartNumber": number, "ETag": out["ETag"]}
        finally:
            slots.release()

    try:
        try:
            for number, part in enumerate(parts, 1):
                await slots.acquire()
                if any(t.done() and t.exception() is not None for t in tasks):
                    slots.release()
                    break
                tasks.append(asyncio.create_task(one(number, part)))
            done = list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait_for(
            fs._call_s3(
                "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            ),
            timeout,
        )
    except BaseException:
        await _abort(fs, bucket, key, upload_id, timeout)
        raise


async def _upload_parts(
    fs: Any, bucket: str, key: str, upload_id: str, chunks: Iterator[io.BytesIO], concurrency: int, timeout: float
) -> list[dict[str, Any]]:
    """Upload parts with up to `concurrency` in flight; a part is built only when a slot is free."""
    slots = asyncio.Semaphore(concurrency)
    tasks: list[asyncio.Task[dict[str, Any]]] = []

    async def one(number: int, body: io.BytesIO) -> dict[str, Any]:
        try:
            out = await asyncio.wait_for(
                fs._call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body),
                timeout,
            )
            return {"PartNumber": number, "ETag": out["ETag"]}
        finally:
            slots.release()

    try:
        for number, body in enumerate(chunks, 1):
            await slots.acquire()
            failed = next((t for t in tasks if t.done() and t.exception() is not None), None)
            if failed is not None:
                slots.release()
                break
            tasks.append(asyncio.create_task(one(number, body)))
            del body
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _abort(fs: Any, bucket: str, key: str, upload_id: str, timeout: float) -> None:
    """Abort an upload, also when the task doing it is being cancelled; failures are left to `abort_stale`."""
    call = asyncio.ensure_future(fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id))
    with contextlib.suppress(BaseException):  # the store is down, or cancelled again: `abort_stale` removes it
        await asyncio.shield(asyncio.wait_for(call, timeout))


def stale_after(timeout: float) -> float:
    """Seconds after its last part an incomplete upload is taken for a killed save's leftover."""
    return max(STALE_FLOOR_S, 2 * timeout)


async def abort_stale(fs: Any, path: str, timeout: float) -> int:
    """Abort incomplete uploads of `path`'s key untouched for `stale_after` seconds; how many (best effort)."""
    bucket, key, _ = fs.split_path(path)
    now = datetime.datetime.now(datetime.UTC)
    horizon = datetime.timedelta(seconds=stale_after(timeout))
    listed = await asyncio.wait_for(fs._call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key), timeout)
    aborted = 0
    for item in listed.get("Uploads", []) or []:
        if item.get("Key") != key or now - item["Initiated"] < horizon:
            continue
        listed_parts = await asyncio.wait_for(
            fs._call_s3("list_parts", Bucket=bucket, Key=key, UploadId=item["UploadId"]), timeout
        )
        last = max([item["Initiated"], *(p["LastModified"] for p in listed_parts.get("Parts", []) or [])])
        if now - last >= horizon:
            await asyncio.wait_for(
                fs._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=item["UploadId"]), timeout
            )
            aborted += 1
    return aborted


async def delete(fs: Any, path: str, timeout: float) -> None:
    """Delete one object (nothing happens when there is none)."""
    bucket, key, _ = fs.split_path(path)
    await asyncio.wait_for(fs._call_s3("delete_object", Bucket=bucket, Key=key), timeout)
    fs.invalidate_cache(path)

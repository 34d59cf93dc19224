"""Streaming `multipart/related` for DICOMweb: read a request body part by part into
files, and write one.

The body is fed to python-multipart's parser as it arrives, each part is written to its
own file in a staging folder, and the total is bounded by the upload limit and the part
count by the series limit, so nothing larger than a chunk is ever held in memory.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not the multipart/related the request says (HTTP status, reason)."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


@dataclass
class Part:
    path: Path
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0


def related_boundary(content_type: str, part_type: str = "application/dicom") -> bytes:
    """The boundary of a `multipart/related; type="<part_type>"` request (415 otherwise)."""
    media, params = parse_options_header(content_type or "")
    if media.lower() != b"multipart/related":
        raise MultipartError(415, f"Content-Type must be multipart/related; type=\"{part_type}\", "
                                  f"not {content_type or 'none'!r}")
    declared = params.get(b"type", b"").decode("latin-1").lower()
    if declared and declared != part_type:
        raise MultipartError(415, f"multipart/related of type {declared!r}: only {part_type!r} is accepted")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError(400, "multipart/related without a boundary")
    return boundary


async def read_parts(body: AsyncIterator[bytes], boundary: bytes, staging: Path, *,
                     max_bytes: int, max_parts: int) -> list[Part]:
    """Write every part of the body to a file in `staging` (which the caller removes)."""
    parts: list[Part] = []
    state: dict = {"field": b"", "value": b"", "headers": {}, "out": None, "total": 0, "ended": False}

    def begin() -> None:
        state["headers"] = {}

    def header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def header_end() -> None:
        state["headers"][state["field"].decode("latin-1").strip().lower()] = state["value"].decode("latin-1").strip()
        state["field"] = state["value"] = b""

    def headers_finished() -> None:
        if len(parts) >= max_parts:
            raise MultipartError(413, f"more than SYNTH_MAX_SERIES_INSTANCES={max_parts} parts")
        path = staging / f"part-{len(parts):05d}-{uuid.uuid4().hex[:8]}"
        headers = state["headers"]
        parts.append(Part(path, headers.get("content-type", ""), headers))
        state["out"] = open(path, "wb")

    def data(chunk: bytes, start: int, end: int) -> None:
        state["total"] += end - start
        if state["total"] > max_bytes:
            raise MultipartError(413, f"upload larger than SYNTH_MAX_UPLOAD_BYTES={max_bytes}")
        state["out"].write(chunk[start:end])
        parts[-1].size += end - start

    def part_end() -> None:
        state["out"].close()
        state["out"] = None

    def end() -> None:
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": begin, "on_header_field": header_field, "on_header_value": header_value,
        "on_header_end": header_end, "on_headers_finished": headers_finished, "on_part_data": data,
        "on_part_end": part_end, "on_end": end,
    })
    try:
        async for chunk in body:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartError:
        raise
    except Exception as exc:  # python-multipart's MultipartParseError and friends
        raise MultipartError(400, f"malformed multipart body: {exc}") from exc
    finally:
        if state["out"] is not None:
            state["out"].close()
    if not state["ended"]:
        raise MultipartError(400, "malformed multipart body: no closing boundary")
    if not parts:
        raise MultipartError(400, "the multipart body holds no parts")
    return parts


def related_body(parts: Iterable[bytes | Path], part_type: str, boundary: str | None = None
                 ) -> tuple[str, Iterator[bytes]]:
    """(Content-Type, body chunks) of a multipart/related response of `parts`."""
    boundary = boundary or uuid.uuid4().hex

    def chunks() -> Iterator[bytes]:
        for part in parts:
            yield f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
            if isinstance(part, Path):
                with open(part, "rb") as f:
                    while block := f.read(1 << 20):
                        yield block
            else:
                yield part
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return f'multipart/related; type="{part_type}"; boundary={boundary}', chunks()

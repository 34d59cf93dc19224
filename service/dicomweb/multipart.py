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
from typing import BinaryIO

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


class PartsWriter:
    """python-multipart's parser writing each part to its own file in `staging`: feed it
    the body with `write`, then `finish` (and `close` in any case). Past `max_bytes` of
    part data or `max_parts` parts it raises MultipartError 413; a malformed body, 400."""

    def __init__(self, boundary: bytes, staging: Path, *, max_bytes: int, max_parts: int) -> None:
        self.parts: list[Part] = []
        self._field = self._value = b""
        self._headers: dict[str, str] = {}
        self._out: BinaryIO | None = None
        self._total = 0
        self._ended = False
        self._staging, self._max_bytes, self._max_parts = staging, max_bytes, max_parts
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._data,
            "on_part_end": self._part_end, "on_end": self._end,
        })

    def _begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        if len(self.parts) >= self._max_parts:
            raise MultipartError(413, f"more than SYNTH_MAX_SERIES_INSTANCES={self._max_parts} parts")
        path = self._staging / f"part-{len(self.parts):05d}-{uuid.uuid4().hex[:8]}"
        self.parts.append(Part(path, self._headers.get("content-type", ""), self._headers))
        self._out = open(path, "wb")

    def _data(self, chunk: bytes, start: int, end: int) -> None:
        self._total += end - start
        if self._total > self._max_bytes:
            raise MultipartError(413, f"upload larger than SYNTH_MAX_UPLOAD_BYTES={self._max_bytes}")
        assert self._out is not None
        self._out.write(chunk[start:end])
        self.parts[-1].size += end - start

    def _part_end(self) -> None:
        self.close()

    def _end(self) -> None:
        self._ended = True

    def write(self, chunk: bytes) -> None:
        try:
            if chunk:
                self._parser.write(chunk)
        except MultipartError:
            raise
        except Exception as exc:  # python-multipart's MultipartParseError and friends
            raise MultipartError(400, f"malformed multipart body: {exc}") from exc

    def finish(self) -> list[Part]:
        """The parts, once the whole body was written."""
        try:
            self._parser.finalize()
        except Exception as exc:
            raise MultipartError(400, f"malformed multipart body: {exc}") from exc
        if not self._ended:
            raise MultipartError(400, "malformed multipart body: no closing boundary")
        if not self.parts:
            raise MultipartError(400, "the multipart body holds no parts")
        return self.parts

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


async def read_parts(body: AsyncIterator[bytes], boundary: bytes, staging: Path, *,
                     max_bytes: int, max_parts: int) -> list[Part]:
    """Write every part of the body to a file in `staging` (which the caller removes)."""
    writer = PartsWriter(boundary, staging, max_bytes=max_bytes, max_parts=max_parts)
    try:
        async for chunk in body:
            writer.write(chunk)
        return writer.finish()
    finally:
        writer.close()


def read_parts_from(body: Iterable[bytes], boundary: bytes, staging: Path, *,
                    max_bytes: int, max_parts: int) -> list[Part]:
    """`read_parts` of a body read synchronously (e.g. a WADO-RS response)."""
    writer = PartsWriter(boundary, staging, max_bytes=max_bytes, max_parts=max_parts)
    try:
        for chunk in body:
            writer.write(chunk)
        return writer.finish()
    finally:
        writer.close()


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

"""The HTTP side of a request, apart from the model: the token, the body (bounded), the images in
it (raw bytes or multipart), ``?top_k``. Each refusal is a :class:`Refused` with its status and
a reason the client can act on; the routes answer it as ``{"error": reason}``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from email.message import Message


class Refused(Exception):
    """A request answered with ``status`` and ``{"error": reason}``, not with a prediction."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def token_digest(token: str) -> str:
    """What a replica keeps of the token: its SHA-256, so the secret itself is neither in Serve's
    stored application config nor in a replica's memory."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def check_token(authorization: str | None, digest: str | None) -> None:
    """``Authorization: Bearer <token>`` against the digest (None: no token asked for);
    compared in constant time."""
    if digest is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Refused(401, "this server asks for a token: Authorization: Bearer <token>", BEARER)
    if not hmac.compare_digest(token_digest(given), digest):
        raise Refused(401, "wrong token", BEARER)


BEARER = {"WWW-Authenticate": "Bearer"}


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to be over ``limit`` bytes: from
    its Content-Length before reading it, or while reading a body sent without one."""
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise Refused(413, too_large(int(content_length), limit))
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise Refused(413, too_large(len(body), limit, "over"))
    return bytes(body)


def too_large(size: int, limit: int, how: str = "") -> str:
    said = f"{how} {size:,}".strip()
    return f"the body is {said} bytes; this server takes at most {limit:,} (--max-body-mb)"


def images_in(body: bytes, content_type: str | None, max_files: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of the images a body holds: the body itself, or each part of a
    ``multipart/form-data`` body (named by its filename, else its field name)."""
    if not is_form(content_type):
        if not body:
            raise Refused(400, "the body is empty: send an image's bytes, or multipart files")
        return [("", body)]
    boundary = _header_params(content_type or "")[1].get("boundary")
    if not boundary:
        raise Refused(400, "multipart/form-data without a boundary parameter")
    files = _parts(body, boundary.encode("latin-1"))
    if not files:
        raise Refused(400, "the multipart body holds no parts: send one or more files")
    if len(files) > max_files:
        raise Refused(
            413, f"{len(files)} files in one request; this server takes at most {max_files}"
        )
    return files


def is_form(content_type: str | None) -> bool:
    """A ``multipart/form-data`` body: files, answered as a list."""
    return _header_params(content_type or "")[0] == "multipart/form-data"


def not_images(named: list[tuple[str, bytes]], errors: list[str]) -> Refused:
    """No image in the request: 400 with each file's reason."""
    said = "; ".join(f"{n}: {e}" if n else e for (n, _), e in zip(named, errors, strict=True))
    return Refused(400, said if len(named) == 1 and not named[0][0] else f"no image: {said}")


def _parts(body: bytes, boundary: bytes) -> list[tuple[str, bytes]]:
    """RFC 7578 parts: each delimited by CRLF--boundary, headers, a blank line, the bytes."""
    files = []
    for chunk in (b"\r\n" + body).split(b"\r\n--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, blank, data = chunk.partition(b"\r\n\r\n")
        if not blank:
            raise Refused(400, "a multipart part without the blank line after its headers")
        _, params = _header_params(_disposition(head.decode("utf-8", "replace")))
        files.append((params.get("filename") or params.get("name") or "", data))
    return files


def _disposition(head: str) -> str:
    """The Content-Disposition of a part's headers (curl writes UTF-8 file names as they are)."""
    for line in head.split("\r\n"):
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "content-disposition":
            return value.strip()
    return ""


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """``type/sub; a=b; c="d"`` -> ("type/sub", {"a": "b", "c": "d"})."""
    msg = Message()
    msg["Content-Type"] = value
    kind, *params = msg.get_params(header="Content-Type", unquote=True) or [("", "")]
    return kind[0].lower(), {k.lower(): str(v) for k, v in params}


def top_k_of(value: str | None, classes: int) -> int:
    """``?top_k=K`` (default 1), at most the model's classes."""
    if value is None:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise Refused(400, f"top_k must be a whole number of at least 1 (got {value!r})")
    return min(int(value), classes)

"""Where audio bytes come from besides the request body: a URL to download, or a server path.

Both are capped at `MAX_UPLOAD_MB` while reading, never after.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import stat
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .config import Settings
from .errors import ApiError

MAX_REDIRECTS = 5


def too_large(limit_bytes: int) -> ApiError:
    return ApiError(
        413,
        "too_large",
        f"the audio is larger than the limit of {limit_bytes / 1024 / 1024:g} MB (MAX_UPLOAD_MB)",
    )


async def load_source(source: str, settings: Settings) -> bytes:
    """Bytes of the audio named by the seed's `{"url": ...}`: an http(s) URL or a local path."""
    source = source.strip()
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return await fetch_url(source, settings)
    if scheme == "file":
        split = urlsplit(source)
        if split.netloc not in ("", "localhost"):
            raise ApiError(400, "invalid_url", "file:// URLs must name a local path")
        return await read_local_file(split.path, settings)
    if source.startswith("/"):
        return await read_local_file(source, settings)
    raise ApiError(
        400,
        "invalid_url",
        "url must be an http:// or https:// URL, or an absolute path on the server",
    )


class UrlNotAllowed(Exception):
    """The URL points somewhere asrd must not connect to."""


async def check_url_allowed(url: str, settings: Settings) -> list[str] | None:
    """Refuse non-http(s) URLs, and (unless ALLOW_PRIVATE_URLS) hosts that resolve to any
    loopback, private, link-local, multicast, reserved or otherwise non-public address.

    Returns the checked addresses, which the caller must connect to (None when any address is
    allowed): resolving the name a second time would let DNS answer differently (rebinding)."""
    split = urlsplit(url)
    if split.scheme.lower() not in ("http", "https") or not split.hostname:
        raise UrlNotAllowed("only http:// and https:// URLs with a host are allowed")
    if settings.allow_private_urls:
        return None
    try:
        port = split.port or (443 if split.scheme.lower() == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(
            split.hostname, port, type=socket.SOCK_STREAM
        )
    except (OSError, ValueError) as exc:
        raise UrlNotAllowed(f"the host can't be resolved ({type(exc).__name__})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses or not all(is_public_address(address) for address in addresses):
        raise UrlNotAllowed(
            "the host resolves to a non-public address (set ALLOW_PRIVATE_URLS to allow)"
        )
    return addresses


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def fetch_url(url: str, settings: Settings) -> bytes:
    """Download `url`, following at most MAX_REDIRECTS redirects, each one checked again
    (a public URL must not bounce the server to a private address)."""
    timeout = httpx.Timeout(
        connect=settings.url_connect_timeout_s,
        read=settings.url_read_timeout_s,
        write=settings.url_read_timeout_s,
        pool=settings.url_connect_timeout_s,
    )
    try:
        async with (
            asyncio.timeout(settings.url_total_timeout_s),
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
        ):
            for _ in range(MAX_REDIRECTS + 1):
                try:
                    response = await send_checked(client, "GET", url, settings)
                except UrlNotAllowed as exc:
                    raise ApiError(403, "url_not_allowed", str(exc)) from None
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = str(httpx.URL(url).join(response.headers["location"]))
                        continue
                    return await _read_capped(response, settings.max_upload_bytes)
                finally:
                    await response.aclose()
    except ApiError:
        raise
    except (TimeoutError, httpx.TimeoutException):
        raise ApiError(504, "fetch_timeout", "fetching the audio URL timed out") from None
    except (httpx.HTTPError, OSError, ValueError) as exc:
        reason = type(exc).__name__
        raise ApiError(502, "fetch_failed", f"fetching the audio URL failed ({reason})") from None
    raise ApiError(
        502, "fetch_failed", f"fetching the audio URL failed: over {MAX_REDIRECTS} redirects"
    )


async def send_checked(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    settings: Settings,
    *,
    json: object = None,
) -> httpx.Response:
    """Send a request to `url` once `check_url_allowed` passes (else `UrlNotAllowed`), with
    the response streamed (the caller closes it).

    It connects only to the addresses that were checked: the URL's host is swapped for each
    in turn, and the Host header and TLS SNI keep the name (so the certificate is verified
    against it)."""
    addresses = await check_url_allowed(url, settings)
    if addresses is None:
        return await client.send(client.build_request(method, url, json=json), stream=True)
    target = httpx.URL(url)
    error: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request(
            method,
            target.copy_with(host=address),
            json=json,
            headers={"Host": target.netloc.decode("ascii")},
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            error = exc  # on to the host's next address, as a resolving client would
    assert error is not None
    raise error


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    if response.status_code >= 400:
        raise ApiError(
            502,
            "fetch_failed",
            f"fetching the audio URL failed: the server answered {response.status_code}",
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > limit:
            raise too_large(limit)
    return bytes(body)


async def read_local_file(raw_path: str, settings: Settings) -> bytes:
    """Read a server file, only below one of `LOCAL_FILE_DIRS` after resolving links and `..`."""
    if not settings.local_file_dirs:
        raise ApiError(
            403,
            "local_files_disabled",
            "reading files on the server is disabled; to allow it, list the permitted "
            "directories in LOCAL_FILE_DIRS (comma-separated)",
        )
    return await asyncio.to_thread(
        _read_allowed_file, raw_path, settings.local_file_dirs, settings.max_upload_bytes
    )


def _read_allowed_file(raw_path: str, allowed_dirs: list[Path], limit: int) -> bytes:
    path = Path(os.path.realpath(raw_path))
    if not any(path.is_relative_to(allowed) for allowed in allowed_dirs):
        raise ApiError(
            403, "forbidden_path", "the path is outside the directories listed in LOCAL_FILE_DIRS"
        )
    try:
        # O_NONBLOCK: opening a FIFO must not hang; it is rejected just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ApiError(404, "file_not_found", "no such file in LOCAL_FILE_DIRS") from None
    except OSError:
        raise ApiError(403, "forbidden_path", "the file can't be read") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ApiError(400, "not_a_file", "the path is not a regular file")
        if info.st_size > limit:
            raise too_large(limit)
        data = file.read(limit + 1)
    if len(data) > limit:
        raise too_large(limit)
    return data

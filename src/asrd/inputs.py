"""Where audio bytes come from besides the request body: a URL to download, or a server path.

Both are capped at `MAX_UPLOAD_MB` while reading, never after.
"""

from __future__ import annotations

import asyncio
import errno
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


# Prefixes whose last 32 bits *are* an IPv4 address: connecting to one reaches that IPv4 host
# (through the kernel, a SIIT or a NAT64 gateway), so it is judged as that address alone.
_IPV4_TRANSLATIONS = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",  # IPv4-compatible (deprecated); also holds :: and ::1, judged non-public
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # SIIT IPv4-translated (RFC 2765)
        "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
    )
)
# NAT64 local-use prefix (RFC 8215): the operator picks where the IPv4 address sits, and it
# only ever leads into the operator's own network, so it is never public.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_public_address(address: str) -> bool:
    """Whether `address` is globally reachable: not loopback, private, link-local, CGNAT,
    multicast, reserved or unspecified. An IPv6 address that embeds an IPv4 address (mapped,
    compatible, SIIT, NAT64, 6to4, Teredo) is judged by that IPv4 address too, so that
    `::ffff:127.0.0.1`, `64:ff9b::a9fe:a9fe` or `2002:7f00:1::1` can't reach what 127.0.0.1
    or 169.254.169.254 would."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _LOCAL_NAT64:
            return False
        if any(ip in net for net in _IPV4_TRANSLATIONS):
            return _is_public_ip(ipaddress.IPv4Address(ip.packed[-4:]))
        # 6to4 (2002::/16) and Teredo (2001::/32, server and client) tunnel to the IPv4
        # addresses they embed: each must be public, and so must the IPv6 address itself.
        embedded = [ip.sixtofour] if ip.sixtofour else list(ip.teredo or ())
        if not all(_is_public_ip(v4) for v4 in embedded):
            return False
    return _is_public_ip(ip)


def _is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
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
    try:
        # A NUL byte or an unencodable character: no file can have that name.
        path = Path(os.path.realpath(raw_path))
        os.fsencode(path)
    except ValueError:
        raise ApiError(400, "invalid_url", "the path is not a valid file name") from None
    if not any(path.is_relative_to(allowed) for allowed in allowed_dirs):
        raise ApiError(
            403, "forbidden_path", "the path is outside the directories listed in LOCAL_FILE_DIRS"
        )
    try:
        # O_NONBLOCK: opening a FIFO must not hang; it is rejected just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise _file_error(exc) from None
    try:
        # Checked on the descriptor, before `fdopen`, which raises for a directory.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ApiError(400, "not_a_file", "the path is not a regular file")
        if info.st_size > limit:
            raise too_large(limit)
        with os.fdopen(fd, "rb") as file:
            fd = -1  # the file object owns it now
            data = file.read(limit + 1)
    except OSError as exc:
        raise _file_error(exc) from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:
        raise too_large(limit)
    return data


def _file_error(exc: OSError) -> ApiError:
    """An allowed path that can't be opened or read, as a client error (never a 500)."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return ApiError(404, "file_not_found", "no such file in LOCAL_FILE_DIRS")
    if isinstance(exc, IsADirectoryError):
        return ApiError(400, "not_a_file", "the path is not a regular file")
    if exc.errno == errno.ENAMETOOLONG:
        return ApiError(400, "invalid_url", "the path is too long")
    return ApiError(403, "forbidden_path", "the file can't be read")

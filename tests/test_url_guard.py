"""The URL guard: which addresses count as public, and redirects checked hop by hop.

Nothing here connects anywhere but loopback: the ranges are tested on the address check
itself, and the redirect tests treat 127.0.0.1 as "public" so that its redirects to 127.0.0.2,
localhost or [::1] (private) must be refused before any connection is made."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from asrd import inputs
from asrd.config import load_settings
from asrd.errors import ApiError


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.0.0.2", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "fd00:ec2::254", "::",
    ],
)  # fmt: skip
def test_non_public_addresses(address: str) -> None:
    assert not inputs.is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert inputs.is_public_address(address)


# Every IPv6 form that embeds an IPv4 address is judged by it: loopback and the cloud
# metadata address (169.254.169.254 = a9fe:a9fe) must not slip through in any of them.
@pytest.mark.parametrize(
    "address",
    [
        "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:169.254.169.254",  # IPv4-mapped
        "::a9fe:a9fe", "::127.0.0.1", "::10.0.0.1", "::0.0.0.2",  # IPv4-compatible
        "::ffff:0:7f00:1", "::ffff:0:a9fe:a9fe", "::ffff:0:a00:1",  # SIIT IPv4-translated
        "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1", "64:ff9b::c0a8:101",  # NAT64 well-known
        "64:ff9b:1::a9fe:a9fe", "64:ff9b:1::808:808", "64:ff9b:1:ffff::1",  # NAT64 local-use
        "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2002:a00:1:1::1",  # 6to4
        "2002:e000:1::1",  # 6to4 of a multicast address
        # Teredo 2001:0:SERVER:flags:port:~CLIENT: a private server, or a private client
        "2001:0:7f00:1::f7f7:f7f7", "2001:0:808:808::80ff:fefe", "2001:0:808:808::5601:5601",
    ],
)  # fmt: skip
def test_embedded_ipv4_is_judged_by_the_ipv4_address(address: str) -> None:
    assert not inputs.is_public_address(address)


@pytest.mark.parametrize("address", ["::ffff:8.8.8.8", "::ffff:0:808:808", "64:ff9b::808:808"])
def test_translated_public_ipv4_stays_public(address: str) -> None:
    # These prefixes reach exactly the IPv4 host (kernel, SIIT, NAT64): its verdict is theirs.
    assert inputs.is_public_address(address)


def fetch(url: str, **settings: object) -> bytes:
    return asyncio.run(inputs.fetch_url(url, load_settings(**settings)))


@pytest.fixture
def public_test_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend 127.0.0.1 (the test file server) is public; every other address keeps its
    real verdict, so 127.0.0.2, ::1 and the rest stay private."""
    real = inputs.is_public_address
    monkeypatch.setattr(inputs, "is_public_address", lambda a: a == "127.0.0.1" or real(a))


# (`localhost` is 127.0.0.1 here, "public" for these tests: the end-to-end test refuses it.)
@pytest.mark.parametrize("target", ["127.0.0.2", "[::1]", "0.0.0.0"])
@pytest.mark.usefixtures("public_test_server")
def test_every_redirect_is_checked(file_server: str, target: str) -> None:
    port = urlsplit(file_server).port
    with pytest.raises(ApiError) as refused:
        fetch(f"{file_server}/to?" + quote(f"http://{target}:{port}/x.wav"))
    assert refused.value.status == 403 and refused.value.code == "url_not_allowed"


@pytest.mark.usefixtures("public_test_server")
def test_redirect_that_stays_public(file_server: str) -> None:
    assert fetch(f"{file_server}/redirect")[:4] == b"fLaC"


@pytest.mark.usefixtures("public_test_server")
def test_connects_to_the_checked_address(monkeypatch: pytest.MonkeyPatch, file_server: str) -> None:
    """DNS rebinding: the name resolves to a "public" address when checked, then to a private
    one. asrd resolves once and connects to the address it checked, keeping the name in Host."""
    port = urlsplit(file_server).port
    lookups = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding_resolver(host: str, *args: object, **kwargs: object) -> list:
        if host != "rebind.test":
            return real_getaddrinfo(host, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_resolver)
    assert fetch(f"http://rebind.test:{port}/host") == f"rebind.test:{port}".encode()
    assert lookups == ["rebind.test"]


def test_redirect_loops_stop(file_server: str) -> None:
    with pytest.raises(ApiError) as excinfo:
        fetch(f"{file_server}/loop", allow_private_urls=True)
    assert excinfo.value.status == 502 and "redirects" in excinfo.value.message


# --- server paths (`{"url": "/path"}` below LOCAL_FILE_DIRS) ------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("a\0b.wav", 400, "invalid_url"),  # NUL: no file has that name
        ("\ud800.wav", 400, "invalid_url"),  # a lone surrogate can't be a file name
        ("x" * 5000, 400, "invalid_url"),  # ENAMETOOLONG
        ("", 400, "not_a_file"),  # the allowed directory itself
        ("sub", 400, "not_a_file"),
        ("clip.wav/inside", 404, "file_not_found"),  # ENOTDIR
        ("missing.wav", 404, "file_not_found"),
        ("locked.wav", 403, "forbidden_path"),  # unreadable (unless the tests run as root)
    ],
)
def test_server_path_errors(tmp_path: Path, name: str, status: int, code: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    locked = tmp_path / "locked.wav"
    locked.write_bytes(b"RIFF")
    locked.chmod(0)
    if name == "locked.wav" and os.access(locked, os.R_OK):
        pytest.skip("running as root: every file is readable")
    settings = load_settings(local_file_dirs=str(tmp_path))
    with pytest.raises(ApiError) as refused:
        asyncio.run(inputs.load_source(f"{tmp_path}/{name}", settings))
    assert (refused.value.status, refused.value.code) == (status, code)

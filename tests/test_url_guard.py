"""The URL guard: which addresses count as public, and redirects checked hop by hop.

Nothing here connects anywhere but loopback: the ranges are tested on the address check
itself, and the redirect test treats 127.0.0.1 as "public" so that its redirect to 127.0.0.2
(private) must be refused before any connection is made."""

from __future__ import annotations

import asyncio

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


def fetch(url: str, **settings: object) -> bytes:
    return asyncio.run(inputs.fetch_url(url, load_settings(**settings)))


def test_every_redirect_is_checked(monkeypatch: pytest.MonkeyPatch, file_server: str) -> None:
    real = inputs.is_public_address
    monkeypatch.setattr(
        inputs, "is_public_address", lambda a: a == "127.0.0.1" or real(a)
    )  # pretend the test server is public; 127.0.0.2 stays private
    with pytest.raises(ApiError) as refused:
        fetch(f"{file_server}/to-private")
    assert refused.value.status == 403 and refused.value.code == "url_not_allowed"
    assert fetch(f"{file_server}/redirect")[:4] == b"fLaC"  # a redirect that stays public


def test_redirect_loops_stop(file_server: str) -> None:
    with pytest.raises(ApiError) as excinfo:
        fetch(f"{file_server}/loop", allow_private_urls=True)
    assert excinfo.value.status == 502 and "redirects" in excinfo.value.message

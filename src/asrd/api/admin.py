"""Who is an admin: the log download and model management need one."""

from __future__ import annotations

import ipaddress

from fastapi import Request

from ..auth import key_matches
from ..errors import ApiError
from .deps import SettingsDep


def require_admin(request: Request, settings: SettingsDep) -> None:
    """Admin: an ADMIN_API_KEYS key, or an AUTHORIZED_MAILS `X-Email` set by a proxy in
    TRUSTED_PROXIES. The proxy check is on the TCP peer, so `Host`, `X-Forwarded-For` and the
    like prove nothing."""
    authorization = request.headers.get("authorization", "")
    key = request.headers.get("x-api-key") or (
        authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    )
    if key_matches(key, settings.admin_api_keys):
        return
    email = request.headers.get("x-email", "").strip().lower()
    trusted = from_trusted_proxy(request, settings.trusted_proxies)
    if email and email in settings.authorized_mails and trusted:
        return
    if not key and not email:
        raise ApiError(401, "unauthorized", "admin credentials required")
    raise ApiError(403, "forbidden", "not allowed")


def from_trusted_proxy(request: Request, networks: list[str]) -> bool:
    peer = request.client.host if request.client else None
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)

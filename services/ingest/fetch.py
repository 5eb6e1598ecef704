"""Download images by URL without becoming a proxy into the private network.

Every hop (the first request and each redirect) is checked twice: the host's resolved
addresses before connecting, and the address actually connected to before any body is
read, so DNS rebinding between the two cannot reach a private service.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from services.errors import FetchFailed, FetchRefused
from services.settings import FetchSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _allowed(addr: IPAddress, allow: Sequence[Network]) -> bool:
    if any(addr in net for net in allow):
        return True
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return _allowed(addr.ipv4_mapped, allow)
    return addr.is_global and not addr.is_multicast


def _check_host(host: str, port: int, allow: Sequence[Network]) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchRefused(f"cannot resolve host {host!r}: {e}") from e
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not _allowed(addr, allow):
            raise FetchRefused(
                f"{host} resolves to {addr}, a private, loopback or link-local address; "
                "add it to SIGHTLINE_FETCH__ALLOW_NETWORKS to permit it"
            )


def _peer_allowed(response: httpx.Response, allow: Sequence[Network]) -> None:
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if peer:
        addr = ipaddress.ip_address(peer[0])
        if not _allowed(addr, allow):
            raise FetchRefused(f"connected to {addr}, which is not an allowed address")


def fetch_image(
    url: str,
    settings: FetchSettings,
    max_bytes: int,
    client: httpx.Client | None = None,
) -> tuple[bytes, str]:
    """Download ``url``; returns (bytes, final URL).

    Raises:
        FetchRefused: bad URL, forbidden address, HTTP 4xx, or over ``max_bytes``.
        FetchFailed: timeouts, connection errors, HTTP 5xx (worth retrying).
    """
    allow = [ipaddress.ip_network(n, strict=False) for n in settings.allow_networks]
    own_client = client is None
    client = client or httpx.Client(
        timeout=settings.timeout_s,
        follow_redirects=False,
        headers={"User-Agent": settings.user_agent},
        trust_env=False,
    )
    try:
        for _ in range(settings.max_redirects + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchRefused(f"only http and https URLs can be fetched: {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            _check_host(parts.hostname, port, allow)
            try:
                with client.stream("GET", url) as response:
                    _peer_allowed(response, allow)
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchRefused(f"redirect without a location from {url}")
                        url = urljoin(url, location)
                        continue
                    if response.status_code >= 500 or response.status_code == 429:
                        raise FetchFailed(f"{url} answered HTTP {response.status_code}")
                    if response.status_code != 200:
                        raise FetchRefused(f"{url} answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise FetchRefused(f"{url} is {declared} bytes; the limit is {max_bytes}")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise FetchRefused(
                                f"{url} is larger than the limit of {max_bytes} bytes"
                            )
                    return bytes(body), url
            except httpx.TimeoutException as e:
                raise FetchFailed(f"timed out fetching {url}") from e
            except httpx.TransportError as e:
                raise FetchFailed(f"network error fetching {url}: {e}") from e
        raise FetchRefused(f"more than {settings.max_redirects} redirects")
    finally:
        if own_client:
            client.close()

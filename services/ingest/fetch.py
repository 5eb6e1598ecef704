"""Download images by URL without becoming a proxy into the private network.

Every hop (the first request and each redirect) is checked twice: the host's resolved
addresses before connecting, and the address actually connected to before any body is
read, so DNS rebinding between the two cannot reach a private service. IPv6 addresses
that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are judged by the
IPv4 address too. The whole download, redirects included, has one deadline: a server
that trickles bytes cannot hold a worker or a request longer than that.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from services.errors import FetchFailed, FetchRefused
from services.settings import FetchSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, if any: IPv4-mapped, IPv4-compatible
    (``::a.b.c.d``), NAT64, 6to4 and Teredo (the client address) all reach it."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if int(addr) >> 32 == 0 and int(addr) > 1:  # ::a.b.c.d (not :: or ::1)
        return low32
    if any(addr in net for net in NAT64):
        return low32
    return None


def _allowed(addr: IPAddress, allow: Sequence[Network]) -> bool:
    if any(addr in net for net in allow):
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if inner is not None:
            return _allowed(inner, allow)
    return addr.is_global and not addr.is_multicast


def check_url(url: str) -> tuple[str, int]:
    """Host and port of an http(s) URL, or FetchRefused for anything malformed."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:  # bad IPv6 literal, port not a number or out of range
        raise FetchRefused(f"not a valid URL: {url!r} ({e})") from e
    if parts.scheme not in ("http", "https") or not host:
        raise FetchRefused(f"only http and https URLs can be fetched: {url!r}")
    return host, port or (443 if parts.scheme == "https" else 80)


def _check_host(host: str, port: int, allow: Sequence[Network]) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as e:
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
    deadline = time.monotonic() + settings.deadline_s
    own_client = client is None
    client = client or httpx.Client(
        timeout=settings.timeout_s,
        follow_redirects=False,
        headers={"User-Agent": settings.user_agent},
        trust_env=False,
    )
    try:
        for _ in range(settings.max_redirects + 1):
            host, port = check_url(url)
            _check_host(host, port, allow)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchFailed(f"{url}: over the {settings.deadline_s:g} s fetch deadline")
            try:
                body, location = _get(client, url, allow, max_bytes, deadline, settings)
            except (httpx.TimeoutException, httpx.StreamError, httpx.TransportError) as e:
                if time.monotonic() >= deadline:
                    raise FetchFailed(
                        f"{url}: over the {settings.deadline_s:g} s fetch deadline"
                    ) from e
                if isinstance(e, httpx.TimeoutException):
                    raise FetchFailed(f"timed out fetching {url}") from e
                raise FetchFailed(f"network error fetching {url}: {e}") from e
            except httpx.InvalidURL as e:
                raise FetchRefused(f"not a valid URL: {url!r} ({e})") from e
            if body is not None:
                return body, url
            url = urljoin(url, location)
        raise FetchRefused(f"more than {settings.max_redirects} redirects")
    finally:
        if own_client:
            client.close()


def _get(
    client: httpx.Client,
    url: str,
    allow: Sequence[Network],
    max_bytes: int,
    deadline: float,
    settings: FetchSettings,
) -> tuple[bytes | None, str]:
    """One hop: the body, or (None, the redirect's location). A watchdog closes the
    response when the deadline passes, so not even one slow read can outlast it."""
    remaining = deadline - time.monotonic()
    timeout = httpx.Timeout(min(settings.timeout_s, max(remaining, 0.001)))
    with client.stream("GET", url, timeout=timeout) as response:
        watchdog = threading.Timer(max(remaining, 0.0), response.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            _peer_allowed(response, allow)
            if response.is_redirect:
                location = response.headers.get("location")
                if not location:
                    raise FetchRefused(f"redirect without a location from {url}")
                return None, location
            if response.status_code >= 500 or response.status_code == 429:
                raise FetchFailed(f"{url} answered HTTP {response.status_code}")
            if response.status_code != 200:
                raise FetchRefused(f"{url} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                raise FetchRefused(f"{url} is {declared} bytes; the limit is {max_bytes}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise FetchRefused(f"{url} is larger than the limit of {max_bytes} bytes")
                if time.monotonic() >= deadline:
                    raise httpx.ReadTimeout("fetch deadline passed")
            return bytes(body), url
        finally:
            watchdog.cancel()

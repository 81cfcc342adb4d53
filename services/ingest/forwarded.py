"""The scheme and host a CRM called when a TLS-terminating proxy sits in front of ingest.

Some CRMs sign the full URL they called (HubSpot v3), so ingest must check the
signature against ``https://crmsync.example.com/...``, not the ``http://10.0.0.7:8080/...``
the proxy forwarded to. The proxy says what the CRM called in ``X-Forwarded-Proto`` and
``X-Forwarded-Host``. Anyone can send those headers, so they count only when the TCP
peer is one of ``services.ingest.trusted_proxies``; from anyone else they are ignored.

How the origin is chosen, given the request's own scheme and Host:

1. The peer is not in a trusted network (or is not an IP address): the request's own.
2. Otherwise each header's first value (a chain of proxies appends; the first is what
   the CRM called) replaces its part: ``X-Forwarded-Proto`` the scheme when it is http
   or https, ``X-Forwarded-Host`` the host when it is a valid host[:port]. A header
   that is missing or invalid leaves that part as it was, so a forged or mangled value
   can only make the signature check fail, never pass.

Pure: no HTTP library, only the values a request carries.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

FORWARDED_PROTO: Final = "X-Forwarded-Proto"
FORWARDED_HOST: Final = "X-Forwarded-Host"
SCHEMES: Final = frozenset({"http", "https"})
MAX_HOST_LENGTH: Final = 253
MAX_PORT: Final = 65535
# One DNS label (RFC 1123): letters, digits and inner hyphens, 63 characters at most.
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_PORT: Final = re.compile(
    rf"(?P<host>{_LABEL}(?:\.{_LABEL})*|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?"
)
_DOTTED_NUMBERS: Final = re.compile(r"[0-9.]+")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str


def is_trusted(peer: str | None, trusted_proxies: Sequence[Network]) -> bool:
    """Whether the TCP peer's address lies in one of the trusted networks."""
    if not peer or not trusted_proxies:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted_proxies)


def valid_host(value: str) -> bool:
    """Whether ``value`` is a host name, IPv4 address or [IPv6] address, with a port or not."""
    # The longest name, or a bracketed IPv6 address, with a port: no regex on anything longer.
    if len(value) > MAX_HOST_LENGTH + len(":65535"):
        return False
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        return False
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= MAX_PORT:
        return False
    ipv6 = match.group("ipv6")
    if ipv6 is not None:
        return _is_address(ipv6, ipaddress.IPv6Address)
    host = match.group("host")
    if _DOTTED_NUMBERS.fullmatch(host):
        # All digits and dots is no host name: it must be an IPv4 address.
        return _is_address(host, ipaddress.IPv4Address)
    return len(host) <= MAX_HOST_LENGTH


def _is_address(value: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True


def _first(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    return value.split(",", 1)[0].strip()


def public_origin(
    own: Origin,
    *,
    peer: str | None,
    headers: Mapping[str, str],
    trusted_proxies: Sequence[Network],
) -> Origin:
    """The scheme and host the CRM called; see the module's steps."""
    # Step 1
    if not is_trusted(peer, trusted_proxies):
        return own
    # Step 2
    scheme, host = own.scheme, own.host
    proto = _first(headers, FORWARDED_PROTO)
    if proto is not None:
        if proto.lower() in SCHEMES:
            scheme = proto.lower()
        else:
            log.warning("ignoring an invalid %s from proxy %s", FORWARDED_PROTO, peer)
    forwarded_host = _first(headers, FORWARDED_HOST)
    if forwarded_host is not None:
        if valid_host(forwarded_host):
            host = forwarded_host
        else:
            log.warning("ignoring an invalid %s from proxy %s", FORWARDED_HOST, peer)
    return Origin(scheme=scheme, host=host)

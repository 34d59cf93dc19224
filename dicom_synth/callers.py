"""Who may send: the calling AE titles allowed to associate, each optionally bound to the
addresses it may come from (SYNTH_ALLOWED_CALLING_AETS entries `AE` or `AE@host-or-cidr`).

`AE` alone allows that title from any address (the old form, kept for compatibility);
`AE@10.0.0.0/8`, `AE@10.1.2.3` or `AE@pacs.example` bind it to a network, an address or
the addresses a host name resolves to (looked up at each association, so a moved host
keeps working). A title may be listed more than once, once per source.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowedCaller:
    ae_title: str
    source: str | None = None
    """As written after the `@`: None = any address."""
    network: _Network | None = None
    """The source as a network (an address is a /32 or /128); None for a host name."""

    @classmethod
    def parse(cls, text: str) -> AllowedCaller:
        ae, at, source = text.strip().partition("@")
        ae, source = ae.strip(), source.strip()
        if not ae or len(ae) > 16 or "\\" in ae or not ae.isprintable():
            raise ValueError(f"allowed caller {text!r}: the AE title must be 1-16 printable characters")
        if not at:
            return cls(ae)
        if not source:
            raise ValueError(f"allowed caller {text!r}: nothing after '@' (write AE@host-or-cidr, or AE alone)")
        try:
            return cls(ae, source, ipaddress.ip_network(source, strict=False))
        except ValueError:
            pass
        if "/" in source or not all(part and len(part) < 64 for part in source.rstrip(".").split(".")):
            raise ValueError(f"allowed caller {text!r}: {source!r} is neither an address, a CIDR nor a host name")
        return cls(ae, source)

    def admits(self, address: str) -> bool:
        """Whether a peer at `address` (an IP address as the socket gives it) may use this title."""
        if self.source is None:
            return True
        peer = _ip(address)
        if peer is None:
            return False
        if self.network is not None:
            return peer.version == self.network.version and peer in self.network
        try:
            resolved = {_ip(str(info[4][0])) for info in socket.getaddrinfo(self.source, None)}
        except OSError:
            return False
        return peer in resolved


class CallerPolicy:
    """The allow-list; `refusal` says why an association may not go on, or None."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.callers = [AllowedCaller.parse(e) for e in entries if e.strip()]

    def refusal(self, ae_title: str, address: str) -> str | None:
        mine = [c for c in self.callers if c.ae_title == ae_title]
        if not mine:
            return f"calling AE title {ae_title!r} not allowed"
        if any(c.admits(address) for c in mine):
            return None
        sources = ", ".join(c.source or "any" for c in mine)
        return f"calling AE title {ae_title!r} not allowed from {address} (allowed from {sources})"


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d
    return ip

"""Per-address rate limit for anonymous traffic: requests that show no known API key.

Where ``auth.open_chat`` or ``auth.open_dashboard`` lets anyone in, and for feedback
posted with a token, no key's limit applies; ``limits.anonymous_requests_per_minute``
then gives each client address a token bucket (one minute's worth, refilled
continuously, like the keys' limits in :mod:`controlplane.limits`), so that one address
flooding is refused with 429 and ``Retry-After`` while others are served.

The client address is the socket peer. ``X-Forwarded-For`` is read only when the peer is
one of ``limits.trusted_proxies``: then the client is the rightmost address in it that is
not a trusted proxy (what the nearest untrusted hop connected from; the entries left of
it are whatever that client wrote). IPv4 clients count by address, IPv6 clients by
network of ``limits.anonymous_ipv6_prefix`` bits (64: one site). At most
``MAX_ADDRESSES`` buckets are kept per replica, the least recently seen dropped first.
The clock is passed in (monotonic seconds).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from controlplane.config import RequestLimits
from controlplane.limits import LimitExceeded, TokenBucket

MAX_ADDRESSES = 100_000
LIMIT = "anonymous_requests_per_minute"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientAddresses:
    """Which client a request comes from (see the module)."""

    def __init__(self, trusted_proxies: tuple[str, ...], ipv6_prefix: int = 64) -> None:
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]
        self.ipv6_prefix = ipv6_prefix

    def _trusted(self, addr: IpAddress | None) -> bool:
        return addr is not None and any(addr in net for net in self.trusted)

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address (or IPv6 network) as text; ``peer``: the socket's host
        (None or not an IP address: counted as that text)."""
        addr = _parse(peer)
        if forwarded_for and self._trusted(addr):
            for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
                hop_addr = _parse(hop)
                if hop_addr is None:  # not an address: no further hop can be trusted
                    break
                addr = hop_addr
                if not self._trusted(hop_addr):
                    break
        if addr is None:
            return (peer or "unknown")[:64]
        return self._key(addr)

    def _key(self, addr: IpAddress) -> str:
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            net = ipaddress.IPv6Network((addr, self.ipv6_prefix), strict=False)
            return str(net) if self.ipv6_prefix < 128 else str(addr)
        return str(addr)


def _parse(text: str | None) -> IpAddress | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class AddressLimiter:
    """Token buckets by client address; ``per_minute`` None: no limit."""

    def __init__(
        self,
        per_minute: int | None,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @classmethod
    def from_limits(
        cls, limits: RequestLimits, clock: Callable[[], float] = time.monotonic
    ) -> AddressLimiter:
        return cls(limits.anonymous_requests_per_minute, clock)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, address: str) -> None:
        """Count one request from ``address``, or raise :class:`LimitExceeded` (429)."""
        if self.per_minute is None:
            return
        now = self.clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            rpm = float(self.per_minute)
            bucket = self._buckets[address] = TokenBucket(rpm, rpm / 60.0, now)
            if len(self._buckets) > self.max_addresses:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        wait = bucket.wait_s(1.0, now)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise LimitExceeded(
                "rate_limit_exceeded",
                LIMIT,
                f"too many requests without an API key from this address (over"
                f" {self.per_minute} per minute in this gateway replica); retry in"
                f" {seconds} s",
                wait,
            )
        bucket.take(1.0, now)

"""Which addresses fleetql may connect to on behalf of a kubeconfig (server-side request forgery).

A kubeconfig's ``server`` is chosen by whoever imports it, and fleetql connects to it from inside
the network it runs in, credential attached. So the server is checked at import and again on
every connection, against the address the name resolves to then: link-local and cloud metadata
addresses are always refused, loopback only while fleetql itself listens on loopback alone, and
``cluster_manager.allowed_networks`` / ``denied_networks`` decide the rest (README "Outbound
addresses (SSRF)").

An address is judged in every spelling a resolver or a socket accepts: IPv6 brackets and zone
ids, IPv4-mapped and -compatible IPv6, the IPv4 inside NAT64 and 6to4 addresses, and the legacy
numeric forms ``inet_aton`` takes (``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from yarl import URL

if TYPE_CHECKING:
    from fleetql.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Looks up a host name: the addresses it resolves to, as text (the system resolver by default;
# tests pass a map of their own).
Lookup = Callable[[str], Awaitable[Sequence[str]]]

_ALLOW_SETTING = "cluster_manager.allowed_networks"
_DENY_SETTING = "cluster_manager.denied_networks"

# Never connected to, whatever the settings say: from these a kubeconfig reaches the host's own
# cloud credentials (metadata services) or something that is not one server at all.
ALWAYS_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(network), why)
    for network, why in (
        (
            "169.254.0.0/16",
            "a link-local address (cloud metadata services answer on 169.254.169.254)",
        ),
        ("fe80::/10", "an IPv6 link-local address"),
        ("fd00:ec2::254/128", "the AWS instance metadata service's IPv6 address"),
        ("100.100.100.200/32", "the Alibaba Cloud instance metadata service's address"),
        ("0.0.0.0/8", "an unspecified address (it reaches the host itself)"),
        ("::/128", "the unspecified IPv6 address (it reaches the host itself)"),
        ("224.0.0.0/4", "a multicast address"),
        ("ff00::/8", "an IPv6 multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
    )
)
# Names of metadata services; their addresses are refused anyway, the names are refused too so
# that a kubeconfig naming one is turned away at import even where the name does not resolve.
REFUSED_NAMES = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"}
)
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
# One part of a legacy numeric IPv4 address, as inet_aton reads it: hex, octal or decimal.
_NUMERIC_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*", re.ASCII)
_NUMERIC_LOOKING = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*", re.ASCII)


class AddressRefused(OSError):
    """The server is, or resolves only to, addresses the policy refuses. An ``OSError`` so that
    aiohttp reports it from a resolver as a failed lookup (``ClientConnectorDNSError``)."""


class NotCanonicalAddress(ValueError):
    """An allowed address in a legacy spelling (``0x7f.1``): TLS and aiohttp need the usual one."""


def parse_network(text: str) -> IPNetwork:
    """A network (``10.0.0.0/8``) or one address (``10.0.0.5``, ``::1``) from the settings;
    IPv4-mapped IPv6 networks are turned into the IPv4 networks they stand for."""
    try:
        network = ipaddress.ip_network(text.strip().strip("[]"))
    except ValueError as error:
        raise ValueError(f"{text!r} is not a network or an address: {error}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        inner = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((inner, network.prefixlen - 96))
    return network


def never_allowed(network: IPNetwork) -> str | None:
    """Why ``network`` cannot be listed in allowed_networks (it lies in an always-refused one)."""
    for refused, why in ALWAYS_REFUSED:
        if _within(network, refused):
            return (
                f"{network} is within {refused} ({why}), which fleetql never connects to; "
                "no setting allows it"
            )
    return None


def _within(network: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(network, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return network.subnet_of(outer)
    if isinstance(network, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return network.subnet_of(outer)
    return False


def parse_address(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form a socket would take, or None for a name.

    Raises ``ValueError`` for a host made only of numeric labels that is no address
    (``1.2.3.4.5``, ``08.1``): no top-level domain is numeric, so it is no name either.
    """
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        # A zone id (fe80::1%eth0, %25 in a URL) picks an interface, not an address.
        return ipaddress.IPv6Address(text.split("%", 1)[0])
    text = text[:-1] if text.endswith(".") else text
    labels = text.split(".")
    if not labels or not all(_NUMERIC_LOOKING.fullmatch(label) for label in labels):
        return None
    address = _inet_aton(labels)
    if address is None:
        raise ValueError(f"{host!r} looks like a numeric address but is not one")
    return address


def is_canonical(host: str, address: IPAddress) -> bool:
    """Whether ``host`` is the usual spelling of ``address`` (dotted quad, or IPv6 text)."""
    text = host.strip().lower().removeprefix("[").removesuffix("]")
    if isinstance(address, ipaddress.IPv6Address):
        return ":" in text
    return text == str(address)


def _inet_aton(labels: list[str]) -> ipaddress.IPv4Address | None:
    """inet_aton's reading: 1 to 4 parts, the last filling the bytes the others left."""
    if not 1 <= len(labels) <= 4 or not all(_NUMERIC_PART.fullmatch(part) for part in labels):
        return None
    values = [
        int(part, 0) if part[:2] in ("0x", "0X") else int(part, 8 if part[0] == "0" else 10)
        for part in labels
    ]
    *leading, last = values
    if any(value > 255 for value in leading) or last >= 1 << (8 * (5 - len(values))):
        return None
    number = 0
    for index, value in enumerate(leading):
        number |= value << (24 - 8 * index)
    return ipaddress.IPv4Address(number | last)


def connect_address(address: IPAddress) -> IPAddress:
    """The address a connection to ``address`` really reaches: an IPv4-mapped or -compatible
    IPv6 address is the IPv4 address inside it. The zone id is dropped."""
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))
        if address in _MAPPED or (address in _COMPATIBLE and int(address) > 1):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _views(address: IPAddress) -> list[IPAddress]:
    """Every address a connection to ``address`` may end at: itself, and the IPv4 address a
    NAT64 or 6to4 gateway would forward it to."""
    address = connect_address(address)
    views: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64:
            views.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        elif address in _SIX_TO_FOUR and address.sixtofour is not None:
            views.append(address.sixtofour)
    return views


@dataclass(frozen=True)
class AddressPolicy:
    """Where clusters may be. The defaults are those of the default settings (fleetql on
    127.0.0.1, so loopback clusters are allowed); servers build it with :meth:`from_settings`."""

    allow_loopback: bool = True
    allowed_networks: tuple[IPNetwork, ...] = ()
    denied_networks: tuple[IPNetwork, ...] = ()
    # Only for the refusal message: what server.host is.
    server_host: str = "127.0.0.1"

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        # Imported here: fleetql.config imports this module to validate the networks.
        from fleetql.config import is_loopback

        manager = settings.cluster_manager
        return cls(
            allow_loopback=is_loopback(settings.server.host),
            allowed_networks=tuple(parse_network(text) for text in manager.allowed_networks),
            denied_networks=tuple(parse_network(text) for text in manager.denied_networks),
            server_host=settings.server.host,
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be connected to (a message naming the setting that would
        allow it), or None when it may."""
        for view in _views(address):
            if (why := self._refusal(view)) is not None:
                return why
        return None

    def _refusal(self, address: IPAddress) -> str | None:
        for network, why in ALWAYS_REFUSED:
            if address.version == network.version and address in network:
                return f"{address} is {why}; fleetql never connects there and no setting allows it"
        allowed = _longest_match(address, self.allowed_networks)
        denied = _longest_match(address, self.denied_networks)
        if denied is not None and (allowed is None or denied.prefixlen >= allowed.prefixlen):
            return (
                f"{address} is in {_DENY_SETTING} ({denied}); remove it there, or add a narrower "
                f"network to {_ALLOW_SETTING}, to allow it"
            )
        if allowed is not None:
            return None
        loopback = _longest_match(address, LOOPBACK)
        if loopback is not None and not self.allow_loopback:
            return (
                f"{address} is a loopback address: fleetql connects to loopback only while it "
                f"listens on loopback alone, and server.host is {self.server_host}; add "
                f"{loopback} to {_ALLOW_SETTING} to allow it"
            )
        return None

    def check(self, address: IPAddress, *, via: str | None = None) -> IPAddress:
        """The address to connect to, or :class:`AddressRefused`; ``via`` says how the host
        led to this address (``x resolves to``), for the message."""
        why = self.refusal(address)
        if why is not None:
            prefix = f"{via} {connect_address(address)}: " if via else ""
            raise AddressRefused(prefix + why)
        return connect_address(address)


def _longest_match(address: IPAddress, networks: Sequence[IPNetwork]) -> IPNetwork | None:
    matches = [net for net in networks if net.version == address.version and address in net]
    return max(matches, key=lambda net: net.prefixlen, default=None)


def refused_name(host: str) -> str | None:
    """Why the host name itself is refused (a metadata service's name), or None."""
    name = host.strip().lower().rstrip(".")
    if name in REFUSED_NAMES:
        return f"{name} is a cloud metadata service's name; fleetql never connects there"
    return None


async def system_lookup(host: str) -> Sequence[str]:
    """The addresses the operating system's resolver gives for ``host`` (the event loop's
    ``getaddrinfo``, in a thread)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def allowed_addresses(
    host: str, policy: AddressPolicy, *, lookup: Lookup = system_lookup
) -> list[IPAddress]:
    """The addresses ``host`` resolves to now that the policy allows, in the resolver's order
    (a refused one is left out); :class:`AddressRefused` when none is left."""
    try:
        literal = parse_address(host)
    except ValueError as error:
        raise AddressRefused(str(error)) from None
    if literal is not None:
        return [policy.check(literal, via=None if is_canonical(host, literal) else f"{host} is")]
    if (why := refused_name(host)) is not None:
        raise AddressRefused(why)
    found = await lookup(host)
    allowed: list[IPAddress] = []
    refusals: list[str] = []
    for text in found:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        try:
            checked = policy.check(address, via=f"{host} resolves to")
        except AddressRefused as refused:
            refusals.append(str(refused))
            continue
        if checked not in allowed:
            allowed.append(checked)
    if not allowed:
        raise AddressRefused(refusals[0] if refusals else f"{host} resolves to no address")
    return allowed


async def check_server(
    server: str,
    policy: AddressPolicy,
    *,
    lookup: Lookup = system_lookup,
    lookup_timeout: float = 3.0,
) -> None:
    """The import-time check of a kubeconfig's ``server`` URL: :class:`AddressRefused` when it
    is or resolves to any refused address, :class:`NotCanonicalAddress` for an allowed address
    in a legacy spelling. A name that does not resolve now (or not within ``lookup_timeout``)
    passes: every connection checks it again."""
    host = URL(server).raw_host or ""
    try:
        literal = parse_address(host)
    except ValueError as error:
        raise AddressRefused(str(error)) from None
    if literal is not None:
        canonical = is_canonical(host, literal)
        checked = policy.check(literal, via=None if canonical else f"{host} is")
        if not canonical:
            raise NotCanonicalAddress(
                f"server {host} spells the address {checked} in a legacy form; write it as "
                f"{checked if checked.version == 4 else f'[{checked}]'}"
            )
        return
    if (why := refused_name(host)) is not None:
        raise AddressRefused(why)
    try:
        async with asyncio.timeout(lookup_timeout):
            found = await lookup(host)
    except (OSError, TimeoutError):
        return
    for text in found:
        policy.check(ipaddress.ip_address(text.split("%", 1)[0]), via=f"{host} resolves to")

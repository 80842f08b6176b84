"""Address management, pure.

- Node and external addresses on the node network (.10, .11, ... for nodes,
  .100, .101, ... for externals, as the contract says).
- One pod CIDR per node carved out of the pod network (node i gets the i-th
  subnet), as kube-controller-manager's range allocator does.
- Pod addresses inside a node's pod CIDR handed out the way CNI's host-local
  IPAM does: the first address is the gateway (cni0), addresses go round-robin
  after the last one given, so a freed address is not reused at once.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Iterable, Iterator


class PoolExhausted(Exception):
    pass


def hosts(net: IPv4Network) -> Iterator[IPv4Address | IPv6Address]:
    """Usable host addresses of a network (no network or broadcast address)."""
    if net.prefixlen >= 31:
        yield from net
        return
    yield from net.hosts()


class AddressPool:
    """Addresses of one range handed out in order, skipping those in use and the
    excluded ranges (a LoadBalancer pool inside the node network)."""

    def __init__(
        self,
        first: IPv4Address,
        last: IPv4Address,
        used: Iterable[str | IPv4Address] = (),
        cursor: str | None = None,
        exclude: Iterable[tuple[IPv4Address, IPv4Address]] = (),
    ):
        self.cls = type(ipaddress.ip_address(first))  # IPv4Address or IPv6Address
        self.first = self.cls(first)
        self.last = self.cls(last)
        self.used: set = {self.cls(a) for a in used if self._ours(a)}
        self.exclude = [(int(a), int(b)) for a, b in exclude if self._ours(a)]
        # host-local remembers the last address it gave and starts after it.
        self.cursor = self.cls(cursor) if cursor and self._ours(cursor) else None

    def _ours(self, ip) -> bool:
        return ipaddress.ip_address(ip).version == self.cls(0).version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, ip) -> bool:
        return self._ours(ip) and self.first <= self.cls(ip) <= self.last

    def reserve(self, ip) -> None:
        self.used.add(self.cls(ip))

    def allocate(self) -> IPv4Address:
        n = self.size
        start = 0
        if self.cursor is not None and self.cursor in self:
            start = int(self.cursor) - int(self.first) + 1
        i = 0
        while i < n:
            value = int(self.first) + (start + i) % n
            skip = next((b for a, b in self.exclude if a <= value <= b), None)
            if skip is not None:  # jump over an excluded range, however large
                i += min(skip, int(self.last)) - value + 1
                continue
            ip = self.cls(value)
            if ip not in self.used:
                self.used.add(ip)
                self.cursor = ip
                return ip
            i += 1
        raise PoolExhausted(f"{self.first}-{self.last}")


def node_pool(node_network: str, used: Iterable[str], exclude=()) -> AddressPool:
    """Node addresses: .10, .11, ... (.1 is the underlay's gateway)."""
    net = ipaddress.ip_network(node_network)
    first = net.network_address + 10 if net.num_addresses > 12 else net.network_address + 2
    return AddressPool(first, net.broadcast_address - 1, used, exclude=exclude)


def external_pool(node_network: str, used: Iterable[str], exclude=()) -> AddressPool:
    net = ipaddress.ip_network(node_network)
    first = net.network_address + 100 if net.num_addresses > 102 else net.network_address + 2
    return AddressPool(first, net.broadcast_address - 1, used, exclude=exclude)


def pod_pool(pod_cidr: str, used: Iterable[str] = (), cursor: str | None = None) -> AddressPool:
    """Pod addresses of a node: .2 up to the last before broadcast (.1 is cni0)."""
    net = ipaddress.ip_network(pod_cidr)
    return AddressPool(net.network_address + 2, net.broadcast_address - 1, used, cursor)


def gateway(pod_cidr: str) -> str:
    """The cni0 address of a node: the first address of its pod CIDR."""
    return str(ipaddress.ip_network(pod_cidr).network_address + 1)


def vtep_address(pod_cidr: str) -> str:
    """flannel.1's address: the pod CIDR's network address, as a /32."""
    return str(ipaddress.ip_network(pod_cidr).network_address)


class SubnetPool:
    """Per-node pod CIDRs: node i gets the i-th subnet unless taken."""

    def __init__(self, pod_network: str, prefixlen: int, used: Iterable[str] = ()):
        self.net = ipaddress.ip_network(pod_network)
        self.prefixlen = prefixlen
        self.used = [ipaddress.ip_network(u) for u in used]

    def count(self) -> int:
        return 2 ** (self.prefixlen - self.net.prefixlen)

    def _nth(self, i: int) -> IPv4Network:
        size = 2 ** (self.net.max_prefixlen - self.prefixlen)
        return ipaddress.ip_network((int(self.net.network_address) + i * size, self.prefixlen))

    def allocate(self, preferred_index: int) -> IPv4Network:
        n = self.count()
        for k in range(n):
            cand = self._nth((preferred_index + k) % n)
            if not any(cand.overlaps(u) for u in self.used):
                self.used.append(cand)
                return cand
        raise PoolExhausted(str(self.net))


def mac_for_ip(ip: str) -> str:
    """A pod's MAC from its IP, as the CNI bridge plugin used to do: 0a:58 + the IPv4 bytes
    (an IPv6 address's last four bytes in an IPv6-only lab)."""
    packed = ipaddress.ip_address(ip).packed[-4:]
    return "0a:58:" + ":".join(f"{b:02x}" for b in packed)

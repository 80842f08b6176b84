"""A real lab per test, driven through labctl's own API (fast) or CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from labctl import changes
from labctl.kernel import netns
from labctl.lab import LabHandle
from labctl.model import names
from labctl.model.documents import parse_text
from labctl.model.objects import Topology
from labctl.model.targets import default_port, resolve
from labctl.probe import scapy_probe
from tests.helpers import dump, lab_doc, lab_processes, new_lab_name, run_labctl

pytestmark = pytest.mark.kernel

# The IP stacks the suites of pods, services, policy and DNS run in (parametrised): an
# IPv4 lab, an IPv6-only lab, and a dual-stack lab probed over its second family (IPv6:
# the family whose rules come from a view of the lab; the first family is IPv4's path).
STACKS = ["ipv4", "ipv6", "dual"]
V6_POOL = "fd00:10:20::c8-fd00:10:20::d2"  # ::200 to ::210 in decimal, as 10.10.20.200-210
_STACK_SPECS = {
    "ipv4": {},
    "ipv6": {"ipFamilies": ["IPv6"]},
    "dual": {
        "ipFamilies": ["IPv4", "IPv6"],
        "nodeNetwork": ["10.10.20.0/24", "fd00:10:20::/64"],
        "podNetwork": ["10.244.0.0/16", "fd00:10:244::/56"],
        "serviceNetwork": ["10.96.0.0/16", "fd00:10:96::/112"],
    },
}


class KernelLab:
    def __init__(self, tmp_path: Path, name: str | None = None):
        self.name = name or new_lab_name()
        self.tmp = tmp_path
        self.handle = LabHandle(self.name)
        self.file = tmp_path / f"{self.name}.yaml"
        self.stack = "ipv4"
        self.fam: int | None = None  # the family probes go over (None: the lab's first)

    # -- building --------------------------------------------------------------

    def use(self, stack: str) -> "KernelLab":
        """Build this lab in one of STACKS: doc() adds its Lab fields, probes and `topo`
        use its family."""
        self.stack = stack
        self.fam = {"ipv4": None, "ipv6": 6, "dual": 6}[stack]
        return self

    @property
    def six(self) -> bool:
        return self.stack != "ipv4"

    def doc(self, **spec) -> dict:
        """The Lab document, in this lab's stack (a loadBalancerPool given for IPv4 becomes
        the stack's: the IPv6 one, or both)."""
        extra = dict(_STACK_SPECS[self.stack])
        if "loadBalancerPool" in spec and self.stack != "ipv4":
            v4 = spec["loadBalancerPool"]
            spec["loadBalancerPool"] = V6_POOL if self.stack == "ipv6" else [v4, V6_POOL]
        return lab_doc(self.name, **{**extra, **spec})

    def write(self, *docs: dict) -> Path:
        self.file.write_text(dump(*docs))
        return self.file

    def up(self, *docs: dict):
        """Bring the lab to these documents (the first is the Lab) through the API."""
        text = dump(*docs)
        self.file.write_text(text)
        return self.handle.change(changes.up(parse_text(text, str(self.file)), str(self.file)), create=True)

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return run_labctl(*args, check=check, input=input)

    def down(self) -> dict:
        return self.handle.down()

    @property
    def topo(self) -> Topology:
        """The applied topology, as the probes' family sees it (a dual-stack lab's IPv6
        view: pods', nodes' and services' IPv6 addresses in their singular fields)."""
        from labctl.model import family

        t = self.handle.applied()
        assert t is not None
        return family.view(t, self.fam) if self.fam and self.fam in family.lab_families(t.lab) else t

    @property
    def whole(self) -> Topology:
        t = self.handle.applied()
        assert t is not None
        return t

    # -- looking -----------------------------------------------------------------

    def node_ns(self, node: str) -> str:
        return names.node_netns(self.name, node)

    def pod_ns(self, pod: str) -> str:
        ns, _, name = pod.rpartition("/")
        return names.pod_netns(self.name, ns or "default", name)

    def sh(self, ns: str, *argv: str, check: bool = True) -> str:
        p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {ns} failed: {p.stderr}")
        return p.stdout

    def jsh(self, ns: str, *argv: str):
        return json.loads(self.sh(ns, *argv) or "null")

    def probe(self, src: str, dst: str, proto: str = "tcp", port: int | None = None, timeout: float = 3.0, via: str | None = None, sport: int | None = None):
        """A probe as `labctl probe` makes it (`sport`: this source port, so that probes are one flow).
        An answer comes in milliseconds: the generous default only bounds a probe that should
        be answered on a loaded CI machine; a test expecting no answer gives a short timeout."""
        topo = self.whole
        from labctl.model.family import is_address
        from labctl.model.targets import family_of_target

        fam = family_of_target(topo, dst, None if is_address(dst) else self.fam)  # as `labctl probe` does
        a = resolve(topo, src, role="FROM", fam=fam)
        b = resolve(topo, dst, role="TO", via=via, fam=fam)
        if proto != "icmp":
            port = port or default_port(b, proto)
        from labctl.probe import ports

        return scapy_probe.probe(a.label, a.netns, b.ip, b.label, proto, port, timeout, sport=sport or ports.reserve(topo.lab.name))

    def pod_ip(self, key: str) -> str:
        if "/" not in key:
            key = "default/" + key
        return self.topo.pod(key).ip

    def owned_pids(self) -> list[int]:
        return lab_processes(self.name)


@pytest.fixture
def klab(root, tmp_path):
    labs: list[KernelLab] = []

    def make(name: str | None = None) -> KernelLab:
        lab = KernelLab(tmp_path, name)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.down()
        left = [n for n in netns.listed() if n.startswith(lab.name + "-")]
        assert not left, f"down left namespaces: {left}"


@pytest.fixture
def lab(klab) -> KernelLab:
    return klab()


class Listener:
    """A TCP server inside a namespace, run by a thread of the test: records who connected."""

    def __init__(self, ns: str, port: int):
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # both families, IPv4 as ::ffff:a.b.c.d
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::", port))
        self.sock.listen(8)
        self.sock.settimeout(5)
        self.peers: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, peer = self.sock.accept()
        except OSError:
            return
        with conn:
            self.peers.append(peer[0].removeprefix("::ffff:"))
            conn.sendall(json.dumps({"pod": "listener", "client": f"{peer[0]}:{peer[1]}"}).encode())

    def close(self) -> list[str]:
        self.thread.join(timeout=5)
        self.sock.close()
        return self.peers

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


class KernelLab:
    def __init__(self, tmp_path: Path, name: str | None = None):
        self.name = name or new_lab_name()
        self.tmp = tmp_path
        self.handle = LabHandle(self.name)
        self.file = tmp_path / f"{self.name}.yaml"

    # -- building --------------------------------------------------------------

    def doc(self, **spec) -> dict:
        return lab_doc(self.name, **spec)

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
        topo = self.topo
        a = resolve(topo, src, role="FROM")
        b = resolve(topo, dst, role="TO", via=via)
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
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", port))
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
            self.peers.append(peer[0])
            conn.sendall(json.dumps({"pod": "listener", "client": f"{peer[0]}:{peer[1]}"}).encode())

    def close(self) -> list[str]:
        self.thread.join(timeout=5)
        self.sock.close()
        return self.peers

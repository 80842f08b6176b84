"""Starting the lab's responder and telling it what to serve."""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Callable

from labctl import failpoints, registry
from labctl.errors import LabError
from labctl.kernel import procs
from labctl.model import family, names
from labctl.model.objects import Topology
from labctl.state.journal import Journal
from labctl.state.store import LabDir

KEY = "responder"
SERVED = ("TCP", "UDP")


def config(topo: Topology) -> dict:
    """What the responder serves: every pod's ports, the ARP answers for LoadBalancer
    IPs, kube-proxy's health check node ports, and what each system add-on of the lab adds."""
    from labctl.proxy.healthcheck import checks
    from labctl.proxy.lb import announcements

    addons = [a for a in registry.addons() if a.enabled(topo.lab)]
    pods = []
    for p in topo.pods:
        ports = [[cp.port, cp.protocol] for cp in p.served_ports() if cp.protocol in SERVED]
        if ports:
            entry = {
                "key": p.key,
                "netns": names.pod_netns(topo.lab.name, p.namespace, p.name),
                "node": p.node,
                "ip": p.ip,
                "ips": list(family.addresses(p)),
                "ports": ports,
            }
            for a in addons:
                entry.update(a.pod_config(topo, p))
            pods.append(entry)
    for e in topo.lab.externals:  # an outside server a selector-less Service can front
        if e.ports:
            ports = [[port, proto] for port, proto in e.ports]
            pods.append(
                {
                    "key": f"ext/{e.name}",
                    "netns": names.external_netns(topo.lab.name, e.name),
                    "node": None,
                    "ip": e.ip,
                    "ips": list(family.addresses(e)),
                    "ports": ports,
                }
            )
    announce = {names.node_netns(topo.lab.name, node): ips for node, ips in announcements(topo).items()}
    cfg: dict = {"pods": pods, "announce": announce, "healthchecks": checks(topo)}
    for a in addons:
        cfg.update(a.responder_config(topo))
    return cfg


def _ask(labdir: LabDir, command: str, timeout: float) -> socket.socket:
    """A connection to the responder's control socket, `command` sent on it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(str(labdir.file("responder.sock")))
        s.sendall(command.encode() + b"\n")
    except BaseException:
        s.close()
        raise
    return s


def _answer(s: socket.socket) -> str:
    """The responder's one-line answer on a connection (closed after)."""
    with s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def _request(labdir: LabDir, command: str, timeout: float = 30.0) -> str:
    return _answer(_ask(labdir, command, timeout))


def running(labdir: LabDir, journal: Journal) -> int | None:
    rec = journal.replay().procs.get(KEY)
    if procs.record_alive(rec):
        return rec["pid"]
    return None


def _log_tail(labdir: LabDir) -> str:
    try:
        return labdir.file("responder.log").read_text()[-600:]
    except FileNotFoundError:
        return ""


def _spawn(labdir: LabDir, journal: Journal, lab: str) -> int:
    return procs.spawn(
        [sys.executable, "-m", "labctl.responder", str(labdir.path)],
        key=KEY,
        journal=journal,
        log=labdir.file("responder.log"),
    )


def _ensure(labdir: LabDir, journal: Journal, lab: str) -> int:
    """The running responder's pid, after replacing one of another labctl version; or a new one."""
    pid = running(labdir, journal)
    if pid is not None and not _wait_ready(labdir, pid, "ping").endswith(f"protocol={_protocol()}"):
        procs.stop([pid])
        journal.release_proc(KEY)
        pid = None
    return pid if pid is not None else _spawn(labdir, journal, lab)


def _protocol() -> int:
    from labctl.responder.server import PROTOCOL

    return PROTOCOL


def start(labdir: LabDir, journal: Journal, topo: Topology) -> None:
    """Start the responder with nothing to serve yet, unless it runs: its start-up
    (and what the lab's add-ons preload, dnspython for the cluster DNS) then
    overlaps the building of the lab, and `apply` has it reload."""
    lab = topo.lab.name
    if running(labdir, journal) is None:
        if not labdir.file("responder.json").exists():
            preload = [m for a in registry.addons() if a.enabled(topo.lab) for m in a.preload]
            labdir.file("responder.json").write_text(json.dumps({"pods": [], "announce": {}, "preload": preload}))
        _spawn(labdir, journal, lab)


def apply(labdir: LabDir, journal: Journal, topo: Topology) -> None:
    """Make the responder serve what `topo` says: start it if needed, have it reload."""
    begin(labdir, journal, topo)()


def begin(labdir: LabDir, journal: Journal, topo: Topology) -> Callable[[], None]:
    """Ask the responder to serve what `topo` says, and return the wait for its
    answer: the caller may sync rules while the responder binds its sockets."""
    cfg = config(topo)
    tmp = labdir.file("responder.json.tmp")
    tmp.write_text(json.dumps(cfg))
    tmp.replace(labdir.file("responder.json"))
    if running(labdir, journal) is None and not cfg["pods"] and not cfg["announce"]:
        return lambda: None
    pid = _ensure(labdir, journal, topo.lab.name)
    try:
        sock = _ask(labdir, "reload", timeout=30.0)
    except OSError:  # not listening yet: ask when the caller waits
        return lambda: _answered(_wait_ready(labdir, pid, "reload"))
    return lambda: _answered(_answer(sock))


def _answered(reply: str) -> None:
    failpoints.hit("responder")
    if not reply.startswith("ok"):
        raise LabError(f"the responder could not serve every port: {reply}")


def _wait_ready(labdir: LabDir, pid: int, command: str, timeout: float = 10.0) -> str:
    """Send `command` once the responder listens (it may still be starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.alive(pid):
            raise LabError(f"the responder (pid {pid}) exited:\n{_log_tail(labdir)}")
        try:
            return _request(labdir, command, timeout=timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.005)
    raise LabError(f"the responder (pid {pid}) did not answer within {timeout:.0f} s:\n{_log_tail(labdir)}")


def status(labdir: LabDir, journal: Journal) -> str:
    pid = running(labdir, journal)
    if pid is None:
        return "not running"
    try:
        reply = _request(labdir, "ping", timeout=2)
    except OSError as e:
        return f"pid {pid}, not answering ({e})"
    return f"pid {pid}, {reply.split()[1]} sockets" if reply.startswith("ok") else f"pid {pid}: {reply}"

"""Starting the lab's responder and telling it what to serve."""

from __future__ import annotations

import json
import socket
import sys
import time

from labctl import names
from labctl.errors import LabError
from labctl.kernel import procs
from labctl.model.objects import Topology
from labctl.state.journal import Journal
from labctl.state.store import LabDir

KEY = "responder"
SERVED = ("TCP", "UDP")


def config(topo: Topology) -> dict:
    from labctl.proxy.lb import announcements

    pods = []
    for p in topo.pods:
        ports = [[cp.port, cp.protocol] for cp in p.served_ports() if cp.protocol in SERVED]
        if ports:
            pods.append(
                {"key": p.key, "netns": names.pod_netns(topo.lab.name, p.namespace, p.name), "node": p.node, "ip": p.ip, "ports": ports}
            )
    announce = {names.node_netns(topo.lab.name, node): ips for node, ips in announcements(topo).items()}
    return {"pods": pods, "announce": announce}


def _request(labdir: LabDir, command: str, timeout: float = 30.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(labdir.file("responder.sock")))
        s.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def running(labdir: LabDir, journal: Journal) -> int | None:
    rec = journal.replay().procs.get(KEY)
    if rec and rec.get("pid") and procs.alive(rec["pid"], rec.get("start")):
        return rec["pid"]
    return None


def _log_tail(labdir: LabDir) -> str:
    try:
        return labdir.file("responder.log").read_text()[-600:]
    except FileNotFoundError:
        return ""


def apply(labdir: LabDir, journal: Journal, topo: Topology) -> None:
    """Make the responder serve what `topo` says: start it, or have it reload."""
    cfg = config(topo)
    tmp = labdir.file("responder.json.tmp")
    tmp.write_text(json.dumps(cfg))
    tmp.replace(labdir.file("responder.json"))
    pid = running(labdir, journal)
    if pid is not None and not _speaks_our_protocol(labdir):
        procs.stop([pid])  # started by another labctl version: start ours
        journal.release_proc(KEY)
        pid = None
    if pid is None:
        if not cfg["pods"] and not cfg["announce"]:
            return
        pid = procs.spawn(
            [sys.executable, "-m", "labctl.responder", str(labdir.path)],
            lab=topo.lab.name,
            key=KEY,
            journal=journal,
            log=labdir.file("responder.log"),
        )
        reply = _wait_ready(labdir, pid)
    else:
        reply = _request(labdir, "reload")
    if not reply.startswith("ok"):
        raise LabError(f"the responder could not serve every port: {reply}")


def _speaks_our_protocol(labdir: LabDir) -> bool:
    from labctl.responder.server import PROTOCOL

    try:
        return _request(labdir, "ping", timeout=5).endswith(f"protocol={PROTOCOL}")
    except OSError:
        return False


def _wait_ready(labdir: LabDir, pid: int, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.alive(pid):
            raise LabError(f"the responder (pid {pid}) exited at start:\n{_log_tail(labdir)}")
        try:
            return _request(labdir, "reload", timeout=timeout)
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.005)
    raise LabError(f"the responder (pid {pid}) did not answer within {timeout:.0f} s:\n{_log_tail(labdir)}")


def status(labdir: LabDir, journal: Journal) -> str:
    pid = running(labdir, journal)
    if pid is not None and not _speaks_our_protocol(labdir):
        procs.stop([pid])  # started by another labctl version: start ours
        journal.release_proc(KEY)
        pid = None
    if pid is None:
        return "not running"
    try:
        reply = _request(labdir, "ping", timeout=2)
    except OSError as e:
        return f"pid {pid}, not answering ({e})"
    return f"pid {pid}, {reply.split()[1]} sockets" if reply.startswith("ok") else f"pid {pid}: {reply}"

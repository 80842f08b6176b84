"""eBPF objects of the ebpf proxy mode, the side-effect edge: the bpffs, the
compiled datapath (cached by source hash), a node's programs and maps pinned
under /sys/fs/bpf/labctl/<lab>/<node>/, the tc filters on pods' veths, map
writes in one `bpftool batch` per node.

BPF objects are the host's, not a namespace's: only the pins keep the maps and
programs alive, so the lab's pin directory is journaled before anything is
pinned in it, and `down` removes it (after a crash too). tc's own pinning
(/sys/fs/bpf/tc/globals, shared by every user of the host) is never used: the
programs are loaded by bpftool with their maps pinned per node, and attached
by file descriptor over netlink inside the node.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sysconfig
import threading
from pathlib import Path

from labctl.errors import HostLacks, KernelError

BPFFS = Path("/sys/fs/bpf")
ROOT = BPFFS / "labctl"
SOURCE = Path(__file__).resolve().parent.parent / "proxy" / "bpf" / "lb.c"
CACHE = Path("/var/cache/labctl/bpf")
INGRESS, EGRESS = "ffff:fff2", "ffff:fff3"  # clsact's two hooks
POD = [("from_container", INGRESS), ("to_container", EGRESS)]  # on each pod's host-side veth
PROGRAMS = ("from_container", "to_container", "from_netdev", "from_host", "to_host")
MAPS = ("lb4_services", "lb4_backends", "lb4_revnat", "ct4", "lb4_affinity", "lb4_config", "lb4_src_range")


def node_hooks(overlay_devices: list[str]) -> list[tuple[str, str, str]]:
    """(device, hook, program) of a node's own devices: eth0 both ways (NodePort,
    LoadBalancer and external IPs in; the node's own traffic to a frontend out),
    cni0 and the overlay's device in (replies to the node's own connections)."""
    return [("eth0", INGRESS, "from_netdev"), ("eth0", EGRESS, "from_host"), ("cni0", INGRESS, "to_host")] + [(d, INGRESS, "to_host") for d in overlay_devices]


_NR_BPF = 321  # x86_64
_BPF_OBJ_GET = 7
_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def node_dir(lab: str, node: str) -> Path:
    return ROOT / lab / node


def lab_dir(lab: str) -> Path:
    return ROOT / lab


def require() -> None:
    """What loading the datapath needs from the host (exit 3 naming it)."""
    for tool, pkg in (("clang", "clang"), ("bpftool", "bpftool")):
        if shutil.which(tool) is None:
            raise HostLacks(
                f"proxyMode ebpf compiles and loads its datapath with {tool}, which is not installed",
                hint=f"sudo apt-get install {pkg} (scripts/setup.sh installs it)",
            )
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise HostLacks("proxyMode ebpf needs libbpf's headers (bpf/bpf_helpers.h)", hint="sudo apt-get install libbpf-dev (scripts/setup.sh installs it)")
    compiled()
    # the kernel's answer is the same until the next boot: asked once per boot (0.15 s)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    known = CACHE / f"sched-cls-{os.uname().release}-{boot}"
    if known.exists():
        return
    probe = subprocess.run(["bpftool", "-j", "feature", "probe", "kernel"], capture_output=True, text=True)
    if probe.returncode != 0 or '"have_sched_cls_prog_type":true' not in probe.stdout.replace(" ", ""):
        raise HostLacks("this kernel cannot load tc (sched_cls) BPF programs, which proxyMode ebpf is made of", hint="use proxyMode iptables, nftables or ipvs")
    known.touch()


def compiled() -> Path:
    """The datapath's object file, compiled once per source (and clang) version."""
    src = SOURCE.read_bytes()
    digest = hashlib.sha256(src + subprocess.run(["clang", "--version"], capture_output=True).stdout).hexdigest()[:16]
    obj = CACHE / f"lb-{digest}.o"
    if obj.exists():
        return obj
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_suffix(f".{os.getpid()}.tmp")
    arch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"  # Debian's multiarch include directory (asm/types.h)
    p = subprocess.run(
        ["clang", "-O2", "-g", "-Wall", "-target", "bpf", f"-I/usr/include/{arch}", "-c", str(SOURCE), "-o", str(tmp)], capture_output=True, text=True
    )
    if p.returncode != 0:
        raise KernelError(f"clang could not compile {SOURCE.name}: {p.stderr.strip()[-2000:]}")
    tmp.replace(obj)
    return obj


def mount() -> None:
    """A bpffs at /sys/fs/bpf, as systemd mounts it (left mounted, like systemd's)."""
    if os.path.ismount(BPFFS):
        return
    p = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True, text=True)
    if p.returncode != 0 and not os.path.ismount(BPFFS):
        raise HostLacks(f"cannot mount a bpffs at {BPFFS}: {p.stderr.strip()}")


def loaded(lab: str, node: str) -> bool:
    d = node_dir(lab, node)
    return all((d / "progs" / prog).exists() for prog in PROGRAMS) and all((d / m).exists() for m in MAPS)


_fresh: set[str] = set()  # nodes this process loaded from nothing


def load(lab: str, node: str, fresh: bool = False) -> bool:
    """The node's programs and maps, pinned in its directory (once; the lab's
    directory must be journaled already). `fresh`: empty maps, unless this process
    made them already (whichever of a sync and a pod's wiring came first).
    True when this call made them (every device then needs the new programs)."""
    key = f"{lab}/{node}"
    with _lock(key):
        if loaded(lab, node) and (not fresh or key in _fresh):
            return False
        _fresh.add(key)
        d = node_dir(lab, node)
        shutil.rmtree(d, ignore_errors=True)  # a half-made one (a crash between pins)
        d.mkdir(parents=True)
        p = subprocess.run(
            ["bpftool", "prog", "loadall", str(compiled()), str(d / "progs"), "type", "classifier", "pinmaps", str(d)], capture_output=True, text=True
        )
        if p.returncode != 0:
            raise KernelError(f"bpftool could not load the datapath on node {node}: {(p.stderr or p.stdout).strip()[-3000:]}")
        return True


def _lock(key: str) -> threading.Lock:
    with _guard:
        return _locks.setdefault(key, threading.Lock())


_libc = ctypes.CDLL(None, use_errno=True)


def _obj_get(path: Path) -> int:
    libc = _libc
    name = ctypes.create_string_buffer(str(path).encode())
    attr = (ctypes.c_uint64 * 2)(ctypes.cast(name, ctypes.c_void_p).value, 0)
    fd = libc.syscall(_NR_BPF, _BPF_OBJ_GET, ctypes.byref(attr), 16)
    if fd < 0:
        raise KernelError(f"cannot open pinned BPF object {path}: {os.strerror(ctypes.get_errno())}")
    return fd


def attach(lab: str, node: str, ns: str, hooks: list[tuple[str, str, str]]) -> None:
    """Programs on devices: (device, clsact hook, program), tc direct action, by
    file descriptor, replacing what was there (idempotent); a device that is not
    there (yet) is passed over."""
    from pyroute2.iproute.linux import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from labctl.kernel import netns

    if not hooks:
        return
    d = node_dir(lab, node) / "progs"
    with _lock(f"{lab}/{node}"):  # not while a fresh load replaces the pins
        fds = {prog: _obj_get(d / prog) for prog in {p for _, _, p in hooks}}
    try:
        with netns.entered(ns), IPRoute() as ip:
            ready: dict[str, int | None] = {}
            for dev, parent, prog in hooks:
                if dev not in ready:
                    idx = ip.link_lookup(ifname=dev)
                    ready[dev] = idx[0] if idx else None
                    if idx:
                        try:
                            ip.tc("add", "clsact", idx[0])
                        except NetlinkError as e:
                            if e.code != 17:  # EEXIST: it has one
                                raise
                if ready[dev] is not None:
                    ip.tc("replace-filter", "bpf", ready[dev], ":1", fd=fds[prog], name=prog, parent=parent, prio=1, classid=1, direct_action=True)
    finally:
        for fd in fds.values():
            os.close(fd)


def detach(ns: str, devices: list[str]) -> None:
    """Remove the clsact qdisc (and with it the filters) from the devices."""
    from pyroute2.iproute.linux import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from labctl.kernel import netns

    with netns.entered(ns), IPRoute() as ip:
        for dev in devices:
            idx = ip.link_lookup(ifname=dev)
            if idx:
                try:
                    ip.tc("del", "clsact", idx[0])
                except NetlinkError:
                    pass


_BPF_MAP_UPDATE_BATCH, _BPF_MAP_DELETE_BATCH = 26, 27


class _BatchAttr(ctypes.Structure):
    """union bpf_attr's `batch` member (linux/bpf.h)."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


def _batch(cmd: int, fd: int, keys: bytes, values: bytes | None, count: int) -> tuple[int, int]:
    """One batch syscall: (elements done, errno or 0)."""
    libc = _libc
    kbuf = ctypes.create_string_buffer(keys, len(keys))
    vbuf = ctypes.create_string_buffer(values, len(values)) if values is not None else None
    attr = _BatchAttr(0, 0, ctypes.addressof(kbuf), ctypes.addressof(vbuf) if vbuf is not None else 0, count, fd, 0, 0)
    rc = libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return (count, 0) if rc == 0 else (attr.count, ctypes.get_errno())


def update(path: Path, entries: dict[bytes, bytes]) -> None:
    """Insert or replace entries of a pinned map, in batch syscalls (BPF_MAP_UPDATE_BATCH)."""
    if not entries:
        return
    fd = _obj_get(path)
    try:
        keys, values = list(entries), list(entries.values())
        done, err = _batch(_BPF_MAP_UPDATE_BATCH, fd, b"".join(keys), b"".join(values), len(keys))
        if err:
            raise KernelError(f"writing {len(keys)} entries to {path} stopped after {done}: {os.strerror(err)}")
    finally:
        os.close(fd)


def delete(path: Path, keys: list[bytes]) -> None:
    """Delete entries of a pinned map (BPF_MAP_DELETE_BATCH); a key already gone is passed over."""
    fd = _obj_get(path)
    try:
        while keys:
            done, err = _batch(_BPF_MAP_DELETE_BATCH, fd, b"".join(keys), None, len(keys))
            if not err:
                return
            if err != 2:  # ENOENT: that key was not there; go on after it
                raise KernelError(f"deleting entries of {path}: {os.strerror(err)}")
            keys = keys[done + 1 :]
    finally:
        os.close(fd)


def dump(path: Path) -> list[dict]:
    import json

    p = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(path)], capture_output=True, text=True)
    if p.returncode != 0:
        raise KernelError(f"bpftool map dump {path}: {p.stderr.strip()}")
    return json.loads(p.stdout or "[]")


def unpin_node(lab: str, node: str) -> None:
    shutil.rmtree(node_dir(lab, node), ignore_errors=True)


def unpin_lab(lab: str) -> None:
    shutil.rmtree(lab_dir(lab), ignore_errors=True)
    try:
        ROOT.rmdir()  # the last lab's: no empty labctl directory left in the bpffs
    except OSError:
        pass


def prog_ids(lab: str, node: str) -> dict[str, int]:
    import json

    out = {}
    for prog in PROGRAMS:
        p = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(node_dir(lab, node) / "progs" / prog)], capture_output=True, text=True)
        if p.returncode == 0:
            out[prog] = json.loads(p.stdout).get("id")
    return out

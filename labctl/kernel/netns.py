"""Named network namespaces, as `ip netns` makes them, without a fork.

A named namespace is a bind mount of a namespace file onto /run/netns/NAME.
setns() is per thread, so a thread can step into a namespace, open a socket
or a /proc/sys/net file there (both stay bound to that namespace) and step
back; the process itself never moves (see `entered`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from labctl import failpoints
from labctl.kernel import ifindex
from labctl.model.names import NETNS_DIR

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]

_home_fd: int | None = None
_home_lock = threading.Lock()
_dir_ready = False


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _home() -> int:
    """The namespace this process started in; threads always come back to it."""
    global _home_fd
    with _home_lock:
        if _home_fd is None:
            _home_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        return _home_fd


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def _prepare_dir() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so that
    mounts under it propagate to mount namespaces made later (ip netns exec)."""
    global _dir_ready
    if _dir_ready:
        return
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    if _libc.mount(b"none", NETNS_DIR.encode(), None, MS_SHARED | MS_REC, None) != 0:
        if ctypes.get_errno() != errno.EINVAL:
            _check(-1, f"mount --make-shared {NETNS_DIR}")
        _check(_libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", MS_BIND | MS_REC, None), f"mount --bind {NETNS_DIR}")
        _check(_libc.mount(b"none", NETNS_DIR.encode(), None, MS_SHARED | MS_REC, None), f"mount --make-shared {NETNS_DIR}")
    _dir_ready = True


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def is_mounted(name: str) -> bool:
    """True when /run/netns/NAME is a live namespace (not a leftover empty file)."""
    try:
        return os.stat(path(name)).st_dev != os.stat(NETNS_DIR).st_dev
    except FileNotFoundError:
        return False


def inode(name: str) -> int | None:
    try:
        st = os.stat(path(name))
    except FileNotFoundError:
        return None
    return st.st_ino if st.st_dev != os.stat(NETNS_DIR).st_dev else None


def create(name: str, sysctls: dict[str, str] | None = None) -> None:
    """Create the named namespace (`sysctls` set in it at once, before any link is
    made). Raises FileExistsError if the name is taken."""
    _prepare_dir()
    target = path(name)
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    home = _home()
    try:
        # unshare() moves only this thread into the new namespace.
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", target.encode(), b"none", MS_BIND, None), f"mount --bind {target}")
            ifindex.note_created(name)  # where its devices go (tunnel modules' fallback devices come first)
            for key, value in (sysctls or {}).items():
                with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                    f.write(value)
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back")
    except BaseException:
        _remove(target)
        raise


def _remove(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):
            raise OSError(e, f"umount {target}: {os.strerror(e)}")
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass


def delete(name: str) -> bool:
    """Remove the named namespace; a missing one is success. Returns whether it was there."""
    target = path(name)
    if not os.path.lexists(target):
        return False
    _remove(target)
    ifindex.forget(name)
    failpoints.hit("netns-del")
    return True


def open_fd(name: str) -> int:
    return os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with this thread inside namespace NAME (None: stay)."""
    if name is None:
        yield
        return
    fd = open_fd(name)
    home = _home()
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns into {name}")
        try:
            yield
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back")
    finally:
        os.close(fd)


def listed() -> list[str]:
    """Names under /run/netns (what `ip netns list` shows)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def write_sysctls(name: str, values: dict[str, str]) -> None:
    """Set sysctls inside a namespace: /proc/sys/net is resolved per opening thread."""
    with entered(name):
        for key, value in values.items():
            p = "/proc/sys/" + key.replace(".", "/")
            with open(p, "w") as f:
                f.write(value)

"""Pieces shared by the commands."""

from __future__ import annotations

import os

import click

from labctl.errors import NoSuchLab
from labctl.lab import LabHandle, resolve_lab_name
from labctl.model.objects import Topology

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")
family_option = click.option(
    "--family",
    "fam",
    type=click.Choice(["4", "6"]),
    help="The IP family to probe over, in a dual-stack lab (default: the lab's first; an IPv6 literal TO is 6).",
)


def family_targets(topo, src: str, dst: str, fam: str | None, via: str | None = None):
    """(FROM, TO, the family's view of the lab) for --family and an address TO."""
    from labctl.model import family
    from labctl.model.targets import family_of_target, resolve

    f = family_of_target(topo, dst, int(fam) if fam else None)
    view = family.view(topo, f) if f is not None else topo
    return resolve(topo, src, role="FROM", fam=f), resolve(topo, dst, role="TO", via=via, fam=f), view


lab_option = click.option(
    "--lab",
    "lab_name",
    metavar="NAME",
    envvar="LABCTL_LAB",
    show_envvar=True,
    help="The lab (may be left out when exactly one is up).",
)


CURRENT: list[str] = []  # the lab this command works on, for the message when it goes down meanwhile


def lab_handle(lab_name: str | None) -> LabHandle:
    """The lab a command names (--lab, LABCTL_LAB, or the only one up), its name checked first."""
    handle = LabHandle(resolve_lab_name(lab_name))
    CURRENT[:] = [handle.name]
    return handle


def running_lab(lab_name: str | None) -> tuple[LabHandle, Topology]:
    handle = lab_handle(lab_name)
    topo = handle.applied()
    if topo is None:
        if handle.exists():
            raise NoSuchLab(
                f"lab {handle.name} did not finish coming up",
                hint=f"run `labctl up` with its file again, or `labctl down {handle.name}`",
            )
        raise NoSuchLab(f"no lab named {handle.name} is up")
    return handle, topo


def responder_pid(handle: LabHandle) -> tuple[int | None, int | None]:
    """Which life of the lab this is: its responder now, and its state directory's
    identity. A lab that goes down and is made again (an `apply` racing a `down`)
    has another responder and another directory, so this tells one life from the
    next, also when the first was caught between the two (no responder yet)."""
    from labctl.responder import control as responder

    try:
        made = os.stat(handle.dir.path).st_ino  # a directory made again is another inode (its ctime moves with every file in it)
    except OSError:
        made = None
    return responder.running(handle.dir, handle.journal), made


def still_up(handle: LabHandle, topo: Topology, responder_before: tuple | None = None) -> None:
    """After a command that probed the lab: if it went down meanwhile, say that (exit 2),
    not what the vanished lab made the probes see. `down` stops the responder first,
    then deletes the namespaces, then the records: any of them gone tells, and so does
    another responder than the one that ran when the probes began (`responder_before`)."""
    from labctl.kernel import netns
    from labctl.model import names

    present = set(netns.listed())
    now = responder_pid(handle) if handle.exists() else (None, None)
    if now[0] is None or any(n not in present for n in names.lab_namespaces(topo)) or (responder_before is not None and now != responder_before):
        raise NoSuchLab(
            f"lab {handle.name} went down (or lost its namespaces or its responder) while this command ran",
            hint=f"`labctl status --lab {handle.name}`; `labctl up` with its file puts back what is missing",
        )


def gone_meanwhile() -> NoSuchLab | None:
    """When the command's lab went down while it ran (its namespaces vanished under
    it): the error to show instead of whatever the kernel said."""
    if not CURRENT:
        return None
    handle = LabHandle(CURRENT[0])
    topo = handle.applied()
    if topo is None:
        return NoSuchLab(f"lab {handle.name} went down while this command ran")
    try:
        still_up(handle, topo)
    except NoSuchLab as e:
        return e
    return None


def counts(topo: Topology) -> str:
    from labctl import registry

    namespaces = {p.namespace for p in topo.pods}
    services = len(topo.services)
    return (
        f"{len(topo.lab.nodes)} node{'s' * (len(topo.lab.nodes) != 1)}, "
        f"{len(topo.lab.externals)} external{'s' * (len(topo.lab.externals) != 1)}, "
        f"{len(topo.pods)} pod{'s' * (len(topo.pods) != 1)} in {len(namespaces)} namespace{'s' * (len(namespaces) != 1)}, "
        f"{services} service{'s' * (services != 1)}" + "".join(f", {a.summary(topo)}" for a in registry.addons() if a.enabled(topo.lab))
    )


def changes(result) -> list[str]:
    """What an `up`, `apply`, `delete` or `ready` changed, for people."""
    out = [f"{k} {v}" for k, v in result.plan.summary().items() if v]
    if result.restarted:
        out.append(f"{result.restarted} commands restarted")
    if result.links_up:
        out.append(f"links set up again: {', '.join(result.links_up)}")
    if result.synced:
        out.append(f"service rules synced on {', '.join(dict.fromkeys(s.node for s in result.synced))}")
    if result.policies_synced:
        out.append(f"network policies synced on {', '.join(dict.fromkeys(p.node for p in result.policies_synced))}")
    return out


def http_request_options(f):
    """--host, --method and -H: the HTTP request `probe --http` makes and `explain --http` reasons about."""
    f = click.option("-H", "--header", "http_headers", multiple=True, metavar="'K: V'", help="--http: a request header (repeatable).")(f)
    f = click.option("--method", "http_method", default="GET", show_default=True, help="--http: the request method.")(f)
    return click.option("--host", "http_host", help="--http: the Host header (default: the target's address).")(f)

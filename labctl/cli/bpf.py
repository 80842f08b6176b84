"""labctl bpf: the ebpf mode's maps as the kernel holds them (as `cilium bpf ...`)."""

from __future__ import annotations

import click

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, running_lab
from labctl.errors import InvalidInput


@cli.group()
def bpf() -> None:
    """Read the ebpf proxy mode's pinned maps (proxyMode: ebpf)."""


@bpf.group()
def lb() -> None:
    """The load-balancing maps."""


@bpf.group()
def ct() -> None:
    """The datapath's connection tracking."""


def _lab(lab_name):
    from labctl import registry

    handle, topo = running_lab(lab_name)
    if not registry.proxy_mode(topo.lab.proxy_mode).bpf_maps:
        raise InvalidInput(f"lab {topo.lab.name} runs proxyMode {topo.lab.proxy_mode}: it has no BPF service maps", hint="proxyMode: ebpf in its Lab")
    return topo


def _nodes(topo, node):
    if node is None:
        return [n.name for n in topo.lab.nodes]
    if topo.lab.node(node) is None:
        raise InvalidInput(f"no node {node!r} in lab {topo.lab.name}")
    return [node]


@lb.command("list")
@lab_option
@click.option("--node", help="One node's maps (default: every node's).")
@json_option
def lb_list(lab_name, node, as_json) -> None:
    """Every frontend with its master slot (count, rev-NAT index, flags) and a line
    per backend slot, read from lb4_services and lb4_backends with bpftool, as
    `cilium bpf lb list` prints them; `backend N not found` marks a slot whose
    backend is missing (maps that drifted)."""
    from labctl.kernel import bpf as B
    from labctl.proxy.bpfmaps import lb_frontends, lb_list

    require_root("bpf lb list")
    topo = _lab(lab_name)
    dumps = {}
    for n in _nodes(topo, node):
        d = B.node_dir(topo.lab.name, n)
        dumps[n] = (B.dump(d / "lb4_services"), B.dump(d / "lb4_backends"))
    if as_json:  # the contract's list of {node, frontend, type, backends}
        output.emit_json([{"node": n, **f} for n, (svc, be) in dumps.items() for f in lb_frontends(svc, be)])
        return
    for n, (svc, be) in dumps.items():
        output.say(f"node {n} ({B.node_dir(topo.lab.name, n)})")
        output.table(["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"], [list(x) for x in lb_list(svc, be)])


@ct.command("list")
@lab_option
@click.argument("node")
@json_option
def ct_list(lab_name, node, as_json) -> None:
    """The node's ct4 entries: for each translated connection, the entry on the
    tuple before NAT (SERVICE: the backend it was given) and the one after NAT
    (what the replies are matched by, with the rev-NAT index)."""
    from labctl.kernel import bpf as B

    require_root("bpf ct list")
    topo = _lab(lab_name)
    _nodes(topo, node)
    from labctl.proxy.bpfmaps import ct_entries

    entries = ct_entries(B.dump(B.node_dir(topo.lab.name, node) / "ct4"))
    if as_json:
        output.emit_json(entries)
        return
    output.table(
        ["PROTO", "SOURCE", "DESTINATION", "ENTRY", "BACKEND", "REVNAT"],
        [
            [
                x["proto"],
                x["src"],
                x["dst"],
                "SERVICE" if x["service"] else "after NAT" + (f" (client {x['client']})" if x["client"] else ""),
                x["backendId"],
                x["revNat"],
            ]
            for x in entries
        ],
    )

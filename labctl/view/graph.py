"""A picture of a lab, rendered as Graphviz DOT or Mermaid text. Pure.

Nodes are boxes holding cni0, their overlay device and their pods; every node
and external hangs off the switch (br0, the node network); Services point at
their endpoints. Given verify's cases, pod pairs are drawn as allowed (green)
or denied (red), a mismatch with Kubernetes semantics in bold.
"""

from __future__ import annotations

from dataclasses import dataclass

from labctl.model.objects import Topology


@dataclass(frozen=True)
class Pair:
    """One verified connection between pods (labctl.policy.verify's Case)."""

    src: str
    dst: str
    allowed: bool
    mismatch: bool = False


NL = "\x00"  # a line break in a label (DOT writes it as \\n)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace(NL, "\\n") + '"'


def _id(kind: str, name: str) -> str:
    return _q(f"{kind}:{name}")


def overlay_device(topo: Topology) -> str | None:
    from labctl import registry

    devices = registry.overlay(topo.lab.overlay).devices
    return devices[0] if devices else None


def dot(topo: Topology, pairs: list[Pair] | None = None) -> str:
    lab = topo.lab
    device = overlay_device(topo)
    out = [
        f"digraph {_q(lab.name)} {{",
        "  graph [rankdir=LR, fontname=Helvetica, fontsize=11, compound=true, newrank=true];",
        "  node [fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=9];",
        f"  label={_q(f'lab {lab.name}: overlay {lab.overlay}, proxy {lab.proxy_mode}, nodes {lab.node_network}, pods {lab.pod_network}')}; labelloc=t;",
        f"  {_id('switch', 'br0')} [shape=box, style=rounded, label={_q(f'br0 (node network {lab.node_network})')}];",
    ]
    for n in lab.nodes:
        out.append(f"  subgraph {_q('cluster_' + n.name)} {{")
        out.append(f"    label={_q(f'node {n.name}  {n.ip}  pod CIDR {n.pod_cidr}')}; style=rounded;")
        out.append(f"    {_id('cni0', n.name)} [shape=box, label={_q(f'cni0 {n.pod_cidr}')}];")
        if device:
            out.append(f"    {_id('dev', n.name)} [shape=box, style=dashed, label={_q(device)}];")
        for p in topo.pods_on(n.name):
            state = " (terminating)" if p.terminating else "" if p.ready else " (not ready)"
            label = f"{p.key}{state}" + NL + str(p.ip)
            out.append(f"    {_id('pod', p.key)} [shape=ellipse, label={_q(label)}];")
            out.append(f"    {_id('pod', p.key)} -> {_id('cni0', n.name)} [arrowhead=none, color=gray50];")
        out.append("  }")
        out.append(f"  {_id('cni0', n.name)} -> {_id('switch', 'br0')} [arrowhead=none, label={_q(f'eth0 {n.ip}')}];")
        if device:
            out.append(f"  {_id('dev', n.name)} -> {_id('switch', 'br0')} [arrowhead=none, style=dashed, color=gray50];")
    for e in lab.externals:
        label = f"ext/{e.name}" + NL + str(e.ip)
        out.append(f"  {_id('ext', e.name)} [shape=box3d, label={_q(label)}];")
        out.append(f"  {_id('ext', e.name)} -> {_id('switch', 'br0')} [arrowhead=none];")
    from labctl.proxy.endpoints import service_ports

    by_ip = {p.ip: p.key for p in topo.pods}
    seen: set[tuple[str, str]] = set()
    for info in service_ports(topo, proxied_only=False):
        s = info.service
        if s.type == "ExternalName":
            continue
        sid = _id("svc", s.key)
        if (s.key, "") not in seen:
            seen.add((s.key, ""))
            label = f"svc/{s.key}" + NL + str(s.cluster_ip or s.type)
            out.append(f"  {sid} [shape=hexagon, color=steelblue, label={_q(label)}];")
        for ep in info.endpoints:
            target = by_ip.get(ep.ip)
            tid = _id("pod", target) if target else _id("ip", ep.ip)
            if (s.key, ep.addr) in seen:
                continue
            seen.add((s.key, ep.addr))
            if not target:
                ext = next((x.name for x in lab.externals if x.ip == ep.ip), None)
                tid = _id("ext", ext) if ext else tid
                if not ext:
                    out.append(f"  {tid} [shape=plaintext, label={_q(ep.ip)}];")
            out.append(f"  {sid} -> {tid} [color=steelblue, style=dashed, label={_q(str(ep.port))}];")
    for pair in pairs or []:
        color = "forestgreen" if pair.allowed else "firebrick"
        style = "bold" if pair.mismatch else ("solid" if pair.allowed else "dashed")
        label = ', label="MISMATCH"' if pair.mismatch else ""
        out.append(f"  {_id('pod', pair.src)} -> {_id('pod', pair.dst)} [color={color}, style={style}, constraint=false{label}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _mid(kind: str, name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in f"{kind}_{name}")


def _mlabel(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def mermaid(topo: Topology, pairs: list[Pair] | None = None) -> str:
    lab = topo.lab
    device = overlay_device(topo)
    out = ["flowchart LR", f"  {_mid('switch', 'br0')}[{_mlabel(f'br0 {lab.node_network}')}]"]
    for n in lab.nodes:
        out.append(f"  subgraph {_mid('node', n.name)}[{_mlabel(f'node {n.name} {n.ip}')}]")
        out.append(f"    {_mid('cni0', n.name)}[{_mlabel(f'cni0 {n.pod_cidr}')}]")
        if device:
            out.append(f"    {_mid('dev', n.name)}[{_mlabel(device)}]")
        for p in topo.pods_on(n.name):
            out.append(f"    {_mid('pod', p.key)}([{_mlabel(f'{p.key} {p.ip}')}])")
            out.append(f"    {_mid('pod', p.key)} --- {_mid('cni0', n.name)}")
        out.append("  end")
        out.append(f"  {_mid('cni0', n.name)} ---|eth0| {_mid('switch', 'br0')}")
    for e in lab.externals:
        out.append(f"  {_mid('ext', e.name)}[/{_mlabel(f'ext/{e.name} {e.ip}')}/] --- {_mid('switch', 'br0')}")
    from labctl.proxy.endpoints import service_ports

    by_ip = {p.ip: p.key for p in topo.pods}
    declared = set()
    for info in service_ports(topo, proxied_only=False):
        s = info.service
        if s.type == "ExternalName":
            continue
        if s.key not in declared:
            declared.add(s.key)
            out.append(f"  {_mid('svc', s.key)}{{{{{_mlabel(f'svc/{s.key} {s.cluster_ip or s.type}')}}}}}")
        for ep in info.endpoints:
            target = by_ip.get(ep.ip)
            if target:
                out.append(f"  {_mid('svc', s.key)} -.->|{ep.port}| {_mid('pod', target)}")
    for pair in pairs or []:
        arrow = "-->" if pair.allowed else "--x"
        out.append(f"  {_mid('pod', pair.src)} {arrow}{'|MISMATCH|' if pair.mismatch else ''} {_mid('pod', pair.dst)}")
    return "\n".join(out) + "\n"


def render(topo: Topology, fmt: str, pairs: list[Pair] | None = None) -> bytes:
    """The picture in a format: dot and mermaid as text, svg and png through
    Graphviz's dot (exit 3 without it)."""
    import shutil
    import subprocess

    from labctl.errors import HostLacks, LabError

    data = (mermaid(topo, pairs) if fmt == "mermaid" else dot(topo, pairs)).encode()
    if fmt not in ("svg", "png"):
        return data
    if shutil.which("dot") is None:
        raise HostLacks(
            f"graph --format {fmt} needs Graphviz's dot, which is not installed",
            hint="sudo apt-get install graphviz (scripts/setup.sh installs it), or --format dot|mermaid",
        )
    p = subprocess.run(["dot", f"-T{fmt}"], input=data, capture_output=True)
    if p.returncode != 0:
        raise LabError(f"dot -T{fmt} failed: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout

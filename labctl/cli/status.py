"""labctl status: nodes, externals, pods, services and network policies."""

from __future__ import annotations

from labctl import output
from labctl.cli import cli
from labctl.cli.common import json_option, lab_option
from labctl.errors import NoSuchLab
from labctl.lab import LabHandle, running_labs
from labctl.state.store import check_name
from labctl.status import status as lab_status


@cli.command()
@lab_option
@json_option
def status(lab_name: str | None, as_json: bool) -> None:
    """Show a lab: nodes, externals, pods, services and network policies."""
    if lab_name is not None and not LabHandle(check_name(lab_name, "--lab (or LABCTL_LAB)")).exists():
        raise NoSuchLab(f"no lab named {lab_name} is up", hint=_which())
    names = [lab_name] if lab_name else running_labs()
    reports = [lab_status(LabHandle(n)) for n in names]
    if as_json:
        output.emit_json(reports[0] if len(reports) == 1 and (lab_name or len(names) == 1) else {"labs": reports})
        return
    if not reports:
        output.say("no lab is up (sudo labctl up topologies/demo.yaml)")
        return
    for i, r in enumerate(reports):
        if i:
            output.say("")
        _show(r)


def _which() -> str:
    up = running_labs()
    return f"labs up: {', '.join(up)}" if up else "no lab is up (sudo labctl up topologies/demo.yaml)"


def _mark(present: bool) -> str:
    return "" if present else " (missing)"


def _show(r: dict) -> None:
    if r["state"] != "up":
        output.say(f"lab {r['lab']}: did not finish coming up; run `labctl up` again or `labctl down {r['lab']}`")
        return
    nets = r["networks"]
    output.say(
        f"[bold]lab {r['lab']}[/bold]  overlay {r['overlay']}  proxy {r['proxyMode']}"
        + (f" ({r['ipvsScheduler']})" if r.get("ipvsScheduler") else "")
        + "  "
        + "  ".join(
            f"nodes {','.join(n['node'] for n in fams)}  pods {','.join(n['pod'] for n in fams)}  services {','.join(n['service'] for n in fams)}"
            for fams in [list((r.get("networksByFamily") or {"": nets}).values())]
        )
    )
    routed = "bgp"  # an overlay whose daemon learns the routes (bgp, ipip) shows each node's peers
    peers = any(isinstance(n.get(routed), dict) for n in r["nodes"])
    output.table(
        ["NODE", "IP", "POD CIDR", "NETNS"] + ([f"{routed.upper()} PEERS"] if peers else []),
        [
            (n["name"], ",".join(n["ips"]), ",".join(n["podCIDRs"]), n["netns"] + _mark(n["present"]))
            + ((", ".join(f"{peer} {state}" for peer, state in n[routed]["peers"].items()) or "-",) if peers else ())
            for n in r["nodes"]
        ],
    )
    if r["externals"]:
        output.say("")
        output.table(["EXTERNAL", "IP", "NETNS"], [(e["name"], ",".join(e["ips"]), e["netns"] + _mark(e["present"])) for e in r["externals"]])
    if r["pods"]:
        output.say("")
        output.table(
            ["NAMESPACE", "POD", "NODE", "IP", "PORTS", "LABELS"],
            [
                (
                    p["namespace"],
                    p["name"] + _mark(p["present"]) + (" (terminating)" if p.get("terminating") else "" if p.get("ready", True) else " (not ready)"),
                    p["node"],
                    ",".join(p["ips"]),
                    ",".join(f"{x['port']}/{x['protocol']}" for x in p["ports"]) or "-",
                    ",".join(f"{k}={v}" for k, v in p["labels"].items()) or "-",
                )
                for p in r["pods"]
            ],
        )
    services = [s for s in r["services"]]
    if services:
        output.say("")
        output.table(
            ["NAMESPACE", "SERVICE", "TYPE", "CLUSTER-IP", "EXTERNAL", "PORTS", "ENDPOINTS"],
            [
                (
                    s["namespace"],
                    s["name"],
                    s["type"],
                    ",".join(s["clusterIPs"]) or s["clusterIP"] or "-",
                    ",".join(s["loadBalancerIPs"]) or s["loadBalancerIP"] or ",".join(s["externalIPs"]) or s["externalName"] or "-",
                    ",".join(_port(p) for p in s["ports"]) or "-",
                    _endpoints(s["endpoints"]),
                )
                for s in services
            ],
        )
        checked = [f"{s['namespace']}/{s['name']} :{s['healthCheckNodePort']}" for s in services if s.get("healthCheckNodePort")]
        if checked:
            output.say(f"health check node ports (200 on nodes with a ready local endpoint, else 503): {', '.join(checked)}")
    if r.get("endpointSlices"):
        from labctl.proxy.endpointslices import table_row

        output.say("")
        output.table(["NAMESPACE", "ENDPOINTSLICE", "ADDRESSTYPE", "PORTS", "ENDPOINTS"], [table_row(s) for s in r["endpointSlices"]])
    if r.get("ingresses"):
        output.say("")
        hosts = {(i["namespace"], i["name"]): i.get("hosts") or "*" for i in r["ingresses"]}
        output.table(
            ["NAMESPACE", "INGRESS", "CLASS", "HOSTS", "ADDRESS", "PORTS"],
            [
                (i["namespace"], i["name"], i["class"] or "<none>", hosts[(i["namespace"], i["name"])], i["address"] or "", "80, 443" if i.get("tls") else "80")
                for i in r["ingresses"]
            ],
        )
    if r.get("gateways"):

        def cond(conds, kind):
            c = next((c for c in conds if c["type"] == kind), None)
            return "-" if c is None else c["status"] + ("" if c["status"] == "True" else f" ({c['reason']})")

        output.say("")
        output.table(
            ["NAMESPACE", "GATEWAY", "CLASS", "ADDRESS", "PROGRAMMED", "LISTENERS (ATTACHED ROUTES)"],
            [
                (
                    g["namespace"],
                    g["name"],
                    g["class"],
                    ",".join(g["addresses"]) or "",
                    cond(g["conditions"], "Programmed"),
                    ", ".join(f"{li['name']}:{li['port']} ({li['attachedRoutes']})" for li in g["listeners"]) or "-",
                )
                for g in r["gateways"]
            ],
        )
    if r.get("httpRoutes"):
        output.say("")
        output.table(
            ["NAMESPACE", "HTTPROUTE", "HOSTNAMES", "PARENTS: ACCEPTED, RESOLVEDREFS"],
            [
                (
                    h["namespace"],
                    h["name"],
                    ",".join(h["hostnames"]) or "*",
                    "; ".join(
                        f"{p['namespace']}/{p['name']}{'/' + p['sectionName'] if p['sectionName'] else ''}: "
                        + ", ".join(c["status"] if c["status"] == "True" else f"{c['status']} ({c['reason']})" for c in p["conditions"])
                        for p in h["parents"]
                    )
                    or "-",
                )
                for h in r["httpRoutes"]
            ],
        )
    if r["policies"]:
        output.say("")
        output.table(
            ["NAMESPACE", "NETWORKPOLICY", "POD-SELECTOR", "TYPES", "SELECTS"],
            [
                (
                    p["namespace"],
                    p["name"],
                    "<none>" if p["podSelector"] == "{}" else p["podSelector"],
                    ",".join(p["policyTypes"]),
                    _endpoints(p["selects"]) if p["selects"] else "-",
                )
                for p in r["policies"]
            ],
        )
    d = r.get("dns")
    if d:
        up = f", other names forwarded to {d['upstream']}" if d["upstream"] else ", other names SERVFAIL (no dnsUpstream)"
        output.say(f"\ncluster DNS: {d['service']} at {d['ip']} (pod {d['pod']} {d['podIP']} on {d['node']}), zone {d['zone']}{up}")
    output.say(f"{'' if d else chr(10)}responder: {r['responder']}")


def _endpoints(eps: list[str]) -> str:
    """As kubectl shows them: the first three, then how many more."""
    if not eps:
        return "<none>"
    return ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "")


def _port(p: dict) -> str:
    text = f"{p['port']}"
    if p["nodePort"]:
        text += f":{p['nodePort']}"
    return text + f"/{p['protocol']}"

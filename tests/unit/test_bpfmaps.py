"""The ebpf mode's maps as data (pure): frontends by scope, stable ids, byte
layout (labctl/proxy/bpf/lb.c's structs), bpftool batch lines, lb list decoding."""

from __future__ import annotations

import struct

import pytest

from labctl.errors import HostLacks
from labctl.proxy import bpfmaps as M
from labctl.proxy.endpoints import service_ports
from tests.helpers import svc, topo_with, web_pod


def infos(*services, pods=None):
    topo = topo_with(
        *services, pods=pods or [web_pod("a", "n1"), web_pod("b", "n2")], nodes=[{"name": "n1"}, {"name": "n2"}], loadBalancerPool="10.10.20.200-10.10.20.210"
    )
    return topo, service_ports(topo)


def masters(ch, scope=None):
    out = {}
    for k, v in ch.updates["lb4_services"].items():
        ip, port, slot, sc = ".".join(map(str, k[:4])), struct.unpack("!H", k[4:6])[0], struct.unpack("<H", k[6:8])[0], k[9]
        if slot == 0 and (scope is None or sc == scope):
            out[(ip, port, sc)] = struct.unpack("<IHHBBH", v)[:5]
    return out


def test_a_cluster_ip_is_one_internal_frontend_with_a_slot_per_endpoint():
    topo, ports = infos(svc("web", {"app": "web"}))
    m = M.render(ports, "n1", "10.10.20.10")
    vip = topo.service("default/web").cluster_ip
    [(_, count, rev, flags, kind)] = [v for (ip, port, sc), v in masters(m).items() if ip == vip]
    assert count == 2 and flags == 0 and kind == M.KINDS["ClusterIP"]
    assert m.updates["lb4_revnat"][M.u16(rev)] == bytes(map(int, vip.split("."))) + struct.pack("!H", 80) + b"\0\0"
    assert len(m.updates["lb4_backends"]) == 2 + 1, "the two pods and the kubernetes service's API server"
    assert m.updates["lb4_config"] == {M.u32(0): bytes([10, 10, 20, 10, 0, 0, 0, 0])}, "the node's address, for SNAT"
    local = [v for v in m.updates["lb4_backends"].values() if v[7] == M.BACKEND_LOCAL]
    assert [".".join(map(str, v[:4])) for v in local] == [topo.pod("default/a").ip], "n1's own endpoint is marked local"


def test_node_ports_and_load_balancers_are_internal_and_external_frontends_with_their_policies():
    topo, ports = infos(svc("np", {"app": "web"}, type="NodePort", externalTrafficPolicy="Local"))
    m = M.render(ports, "n1", "10.10.20.10")
    np = topo.service("default/np").ports[0].node_port
    inside = masters(m)[("10.10.20.10", np, 0)]
    outside = masters(m)[("10.10.20.10", np, 1)]
    assert inside[1] == 2, "from inside, kube-proxy's short-circuit: every endpoint"
    assert outside[1] == 1 and not outside[3] & M.SVC_SNAT, "externalTrafficPolicy Local: the local endpoint, no SNAT"
    m2 = M.render(ports, "n2", "10.10.20.11")
    assert masters(m2)[("10.10.20.11", np, 1)][1] == 1
    _, cluster = infos(svc("np", {"app": "web"}, type="NodePort"))
    assert masters(M.render(cluster, "n1", "10.10.20.10"))[("10.10.20.10", np, 1)][3] & M.SVC_SNAT


def test_local_policies_without_a_local_endpoint_drop_and_no_endpoint_at_all_rejects():
    _, ports = infos(svc("itp", {"app": "web"}, internalTrafficPolicy="Local"), svc("none", {"app": "nobody"}), pods=[web_pod("b", "n2")])
    m = masters(M.render(ports, "n1", "10.10.20.10"), scope=0)
    flags = {count_flags[3] for count_flags in m.values() if count_flags[1] == 0}
    assert M.SVC_DROP in flags and 0 in flags, m


def test_a_change_rewrites_its_own_entries_keeps_ids_and_frees_what_nobody_names():
    topo, ports = infos(svc("web", {"app": "web"}))
    ch, parts, ids = M.diff(ports, [], {}, {}, "n1", "10.10.20.10")
    old = {k: {"fp": "x", **p} for k, p in parts.items()}
    b_ip = topo.pod("default/b").ip
    _, fewer = infos(svc("web", {"app": "web"}), pods=[web_pod("a", "n1")])
    web = [i for i in fewer if i.service.name == "web"]
    ch2, parts2, ids2 = M.diff(web, [], old, ids, "n1", "10.10.20.10")
    a_key = f"{topo.pod('default/a').ip}:8080/6"
    assert ids2["backendIds"][a_key] == ids["backendIds"][a_key], "a kept backend keeps its id"
    assert f"{b_ip}:8080/6" not in ids2["backendIds"] and ch2.deletes["lb4_backends"] == [M.u32(ids["backendIds"][f"{b_ip}:8080/6"])]
    assert len(ch2.deletes["lb4_services"]) == 1, "the second slot goes; the master and first slot are rewritten"
    assert set(ch2.updates["lb4_services"]) | set(ch2.deletes["lb4_services"]) <= set(ch.updates["lb4_services"])
    kube = [k for k in parts if k.startswith("default/kubernetes")]
    ch3, parts3, ids3 = M.diff([], kube, old, ids, "n1", "10.10.20.10")
    assert parts3 == {kube[0]: None} and ch3.deletes["lb4_revnat"] and ch3.deletes["lb4_backends"], "a removed port's frontend and backend go"
    assert not ch3.updates["lb4_services"]


def test_lb_list_prints_what_cilium_prints_and_names_missing_backends():
    topo, ports = infos(svc("web", {"app": "web"}))
    m = M.render(ports, "n1", "10.10.20.10")

    def dump(entries):
        return [{"key": [f"0x{b:02x}" for b in k], "value": [f"0x{b:02x}" for b in v]} for k, v in entries.items()]

    backends = dict(m.updates["lb4_backends"])
    backends.pop(next(iter(backends)))  # a drifted map
    rows = M.lb_list(dump(m.updates["lb4_services"]), dump(backends))
    vip = topo.service("default/web").cluster_ip
    i = next(i for i, (s, _) in enumerate(rows) if s == f"{vip}:80/TCP")
    assert rows[i][1].endswith("[ClusterIP] (master, count=2)") and rows[i + 1][0] == ""
    assert any("not found" in b for _, b in rows)
    fronts = M.lb_frontends(dump(m.updates["lb4_services"]), dump(m.updates["lb4_backends"]))
    [web] = [f for f in fronts if f["frontend"] == f"{vip}:80/tcp"]
    assert web["type"] == "ClusterIP" and sorted(web["backends"]) == sorted(f"{topo.pod(p).ip}:8080" for p in ("default/a", "default/b"))


def test_a_host_without_clang_is_exit_3_naming_it(monkeypatch):
    from labctl.kernel import bpf

    monkeypatch.setattr(bpf.shutil, "which", lambda tool: None if tool == "clang" else "/usr/bin/" + tool)
    with pytest.raises(HostLacks) as e:
        bpf.require()
    assert e.value.exit_code == 3 and "clang" in str(e.value)


def test_source_ranges_are_a_flag_and_lpm_prefixes_under_the_frontends_rev_nat():
    lb = svc("lb", {"app": "web"}, type="LoadBalancer", loadBalancerSourceRanges=["10.10.20.100/32", "192.0.2.0/24"])
    topo, ports = infos(lb)
    ch = M.render(ports, "n1", "10.10.20.10")
    ip = topo.service("default/lb").load_balancer_ip
    fronts = {k: v for k, v in masters(ch).items() if k[0] == ip}
    assert fronts and all(v[3] & M.SVC_FIREWALL for v in fronts.values()), "both scopes of the LoadBalancer IP"
    rev = next(iter(fronts.values()))[2]
    assert M.src_range_key(rev, "192.0.2.0/24") in ch.updates["lb4_src_range"]
    assert M.src_range_key(rev, "192.0.2.0/24") == struct.pack("<IHH", 32 + 24, rev, 0) + bytes([192, 0, 2, 0])
    np_ = [v for (i, _, _), v in masters(ch).items() if i == "10.10.20.10"]
    assert np_ and not any(v[3] & M.SVC_FIREWALL for v in np_), "the NodePort is not filtered"

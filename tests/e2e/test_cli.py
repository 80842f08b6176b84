"""The CLI as a user types it: exit codes, JSON shapes, messages."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from labctl.kernel import netns
from labctl.model import names
from tests.helpers import REPO, dump, lab_doc, labctl_cmd, new_lab_name, pod, run_labctl

pytestmark = pytest.mark.e2e


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1"]
    return subprocess.run(cmd + labctl_cmd() + list(args), capture_output=True, text=True, cwd=REPO)


@pytest.fixture
def cli_lab(root, tmp_path):
    name = new_lab_name()
    path = tmp_path / "lab.yaml"
    path.write_text(dump(lab_doc(name, externals=[{"name": "client"}]), pod("a", node="node1", udp=(53,)), pod("b", node="node2")))
    yield name, path
    run_labctl("down", name)
    assert not [n for n in netns.listed() if n.startswith(name + "-")]


def test_validate_needs_no_root_and_creates_nothing():
    p = as_nobody("validate", "topologies/demo.yaml")
    assert p.returncode == 0, p.stderr
    assert (
        "valid: lab demo, 3 nodes, 1 external, 9 pods in 4 namespaces, 7 services, cluster DNS at 10.96.0.10, ingress controller at 10.10.20.201, 1 Gateway"
        in p.stdout
    )
    j = json.loads(as_nobody("validate", "topologies/demo.yaml", "--json").stdout)
    assert j["valid"] and [n["ip"] for n in j["nodes"]] == ["10.10.20.10", "10.10.20.11", "10.10.20.12"]


def test_bad_input_is_exit_2_with_document_and_field(tmp_path, root):
    bad = tmp_path / "bad.yaml"
    name = new_lab_name()
    doc = pod("web")
    doc["spec"]["containers"][0]["ports"][0]["containerPort"] = 99999
    bad.write_text(dump(lab_doc(name), doc))
    for args in (["validate", str(bad)], ["up", str(bad)]):
        p = run_labctl(*args, check=False)
        assert p.returncode == 2
        assert "document 2 (line" in p.stderr and "Pod default/web" in p.stderr
        assert "spec.containers[0].ports[0].containerPort: 99999 is out of range 1-65535" in p.stderr
    assert not [n for n in netns.listed() if n.startswith(name + "-")]
    assert not Path(f"/run/labctl/{name}").exists()
    j = json.loads(run_labctl("validate", str(bad), "--json", check=False).stdout)
    assert j == {
        "valid": False,
        "problems": [{"where": j["problems"][0]["where"], "path": "spec.containers[0].ports[0].containerPort", "message": "99999 is out of range 1-65535"}],
    }
    missing = run_labctl("up", str(tmp_path / "nope.yaml"), check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.parametrize("args", [["up", "topologies/demo.yaml"], ["down", "demo"], ["exec", "toolbox", "--", "true"], ["probe", "a", "b"]])
def test_commands_that_touch_the_kernel_need_root_exit_3(args):
    p = as_nobody(*args)
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert "needs root" in p.stderr and "sudo labctl" in p.stderr


def test_up_status_probe_exec_down_json(cli_lab):
    name, path = cli_lab
    up = json.loads(run_labctl("up", str(path), "--json").stdout)
    assert up["created"] is True and up["changes"]["podsAdded"] == 2
    st = json.loads(run_labctl("status", "--lab", name, "--json").stdout)
    assert st["lab"] == name
    assert {"name", "ip", "podCIDR"} <= set(st["nodes"][0])
    assert st["nodes"][0]["ip"] == "10.10.20.10" and st["nodes"][0]["podCIDR"] == "10.244.0.0/24"
    assert st["externals"] == [{"name": "client", "ip": "10.10.20.100", "ips": ["10.10.20.100"], "netns": f"{name}-client", "present": True}]
    a = next(p for p in st["pods"] if p["name"] == "a")
    assert {k: a[k] for k in ("namespace", "name", "node", "ip", "labels")} == {
        "namespace": "default",
        "name": "a",
        "node": "node1",
        "ip": "10.244.0.2",
        "labels": {"app": "a"},
    }
    [kube] = st["services"]
    assert {k: kube[k] for k in ("namespace", "name", "type", "clusterIP", "endpoints", "loadBalancerIP")} == {
        "namespace": "default",
        "name": "kubernetes",
        "type": "ClusterIP",
        "clusterIP": "10.96.0.1",
        "endpoints": ["10.10.20.10:6443"],
        "loadBalancerIP": None,
    }
    assert kube["ports"] == [{"name": "https", "port": 443, "targetPort": 6443, "protocol": "TCP", "nodePort": None, "endpoints": ["10.10.20.10:6443"]}]
    assert st["policies"] == []
    pr = json.loads(run_labctl("probe", "--lab", name, "a", "b", "--json").stdout)
    assert {k: pr[k] for k in ("from", "to", "proto", "port", "verdict", "served_by", "client_ip_seen")} == {
        "from": "default/a",
        "to": "10.244.1.2",
        "proto": "tcp",
        "port": 8080,
        "verdict": "open",
        "served_by": "default/b",
        "client_ip_seen": "10.244.0.2",
    }
    assert isinstance(pr["rtt_ms"], float)
    udp = json.loads(run_labctl("probe", "--lab", name, "b", "a", "--proto", "udp", "--json").stdout)
    assert udp["port"] == 53 and udp["verdict"] == "open" and udp["served_by"] == "default/a"
    # --expect turns a verdict into an exit code
    assert run_labctl("probe", "--lab", name, "a", "b", "--port", "9", "--expect", "refused").returncode == 0
    wrong = run_labctl("probe", "--lab", name, "a", "b", "--port", "9", "--expect", "open", check=False)
    assert wrong.returncode == 1 and "expected open, got refused" in wrong.stderr
    # exec runs in the namespace and passes the exit code through
    assert "10.244.0.2/24" in run_labctl("exec", "--lab", name, "a", "--", "ip", "-4", "addr", "show", "eth0").stdout
    assert "flannel.1" in run_labctl("exec", "--lab", name, "node/node1", "--", "ip", "route").stdout
    assert run_labctl("exec", "--lab", name, "a", "--", "sh", "-c", "exit 7", check=False).returncode == 7
    down = json.loads(run_labctl("down", name, "--json").stdout)
    assert down["found"] and down["namespaces"] == 6


def test_exec_gives_the_pods_etc_files_like_ip_netns_exec(cli_lab):
    name, path = cli_lab
    run_labctl("up", str(path))
    etc = Path("/etc/netns") / names.pod_netns(name, "default", "a")
    ip = json.loads(run_labctl("status", "--lab", name, "--json").stdout)["pods"][0]["ip"]
    out = run_labctl("exec", "--lab", name, "a", "--", "cat", "/etc/hosts").stdout
    assert f"{ip}\ta\n" in out and out == (etc / "hosts").read_text(), "kubelet's managed hosts file, mounted by ip netns exec"
    resolv = run_labctl("exec", "--lab", name, "a", "--", "cat", "/etc/resolv.conf").stdout
    assert resolv == Path("/etc/resolv.conf").read_text(), "no cluster DNS in this lab: the node's resolv.conf (kubelet's Default)"
    run_labctl("down", name)
    assert not etc.exists(), "down removes the pod's /etc/netns directory"


def test_blocked_and_filtered_verdicts_from_real_rules(cli_lab):
    name, path = cli_lab
    run_labctl("up", str(path))
    node2 = names.node_netns(name, "node2")
    subprocess.run(
        ["ip", "netns", "exec", node2, "iptables", "-I", "FORWARD", "-p", "tcp", "--dport", "8080", "-j", "REJECT", "--reject-with", "icmp-admin-prohibited"],
        check=True,
    )
    blocked = json.loads(run_labctl("probe", "--lab", name, "a", "b", "--json").stdout)
    assert blocked["verdict"] == "blocked" and blocked["served_by"] is None and "admin-prohibited" in blocked["detail"]
    subprocess.run(["ip", "netns", "exec", node2, "iptables", "-I", "FORWARD", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP"], check=True)
    filtered = json.loads(run_labctl("probe", "--lab", name, "a", "b", "--proto", "icmp", "--timeout", "0.3", "--json").stdout)
    assert filtered["verdict"] == "filtered" and filtered["rtt_ms"] is None


def test_unknown_targets_and_missing_lab_are_clear(cli_lab):
    name, path = cli_lab
    run_labctl("up", str(path))
    p = run_labctl("probe", "--lab", name, "a", "default/c", check=False)
    assert p.returncode == 2 and "no pod default/c" in p.stderr
    p = run_labctl("status", "--lab", "nosuchlab", check=False)
    assert p.returncode == 2 and "no lab named nosuchlab is up" in p.stderr
    p = run_labctl("exec", "--lab", name, "a", check=False)
    assert p.returncode == 2 and "no command given" in p.stderr


def test_the_lab_may_be_left_out_when_exactly_one_is_up(root, tmp_path):
    """In a state root of its own, so that no other lab on this machine is up there."""
    name = new_lab_name()
    path = tmp_path / "lab.yaml"
    path.write_text(dump(lab_doc(name, nodes=[{"name": "node1"}]), pod("a")))
    env = dict(os.environ, LABCTL_STATE_DIR=str(tmp_path / "state"))
    run_labctl("up", str(path), env=env)
    try:
        assert json.loads(run_labctl("status", "--json", env=env).stdout)["lab"] == name
        assert run_labctl("probe", "a", "node/node1", "--proto", "icmp", env=env).returncode == 0
    finally:
        run_labctl("down", name, env=env)
    none = run_labctl("status", "--lab", name, env=env, check=False)
    assert none.returncode == 2 and f"no lab named {name} is up" in none.stderr


def test_explain_a_pod_and_a_service_in_each_proxy_mode(root, tmp_path):
    name = new_lab_name()
    path = tmp_path / "lab.yaml"
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "only-a"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a"}}}]}]},
    }
    web = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    docs = [pod("a", node="node1"), pod("b", node="node2"), pod("w", node="node2", labels={"app": "web"}), deny, web]
    try:
        for mode, kernel in (("iptables", "KUBE-SVC-"), ("nftables", "table ip kube-proxy")):
            path.write_text(dump(lab_doc(name, proxyMode=mode), *docs))
            run_labctl("up", str(path))
            ok = json.loads(run_labctl("explain", "--lab", name, "a", "svc/default/web", "--json").stdout)
            assert ok["allowed"] is True and ok["service"]["node"] == "node1" and kernel in ok["service"]["kernel"][0]
            assert [e["endpoint"] for e in ok["service"]["endpoints"]] == ["default/w"]
            no = json.loads(run_labctl("explain", "--lab", name, "b", "svc/default/web", "--json").stdout)
            assert no["allowed"] is False and "no rule allows it" in no["service"]["endpoints"][0]["explanation"][1]
            direct = json.loads(run_labctl("explain", "--lab", name, "b", "w", "--json").stdout)
            assert direct["allowed"] is False and direct["ingress"]["isolatedBy"] == ["default/only-a"]
    finally:
        run_labctl("down", name)

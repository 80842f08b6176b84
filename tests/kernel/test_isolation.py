"""Labs touch nothing of the host's root namespace, and two labs run side by side."""

from __future__ import annotations

import json
import subprocess

import pytest

from labctl.errors import LabError
from labctl.kernel import netns
from tests.helpers import pod

pytestmark = pytest.mark.kernel


def root_view() -> dict:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def strip_comments(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    links = [(link["ifname"], link.get("address"), link["mtu"]) for link in json.loads(run("ip", "-j", "link"))]
    return {
        "links": links,
        "addresses": run("ip", "addr"),
        "routes": run("ip", "route", "show", "table", "all"),
        "iptables": strip_comments(run("iptables-save")),
        "nft": run("nft", "list", "ruleset"),
        "sysctl": run("sysctl", "net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables", "net.ipv4.icmp_ratelimit"),
    }


def test_the_host_root_namespace_is_unchanged(klab):
    before = root_view()
    lab = klab()
    lab.up(lab.doc(externals=[{"name": "x"}]), pod("a"), pod("b"))
    assert lab.probe("a", "b").verdict == "open"
    during = root_view()
    lab.down()
    after = root_view()
    assert during == before
    assert after == before


def test_two_labs_side_by_side(klab):
    one = klab()
    two = klab()
    one.up(one.doc(overlay="vxlan"), pod("a", node="node1"), pod("b", node="node2"))
    two.up(
        two.doc(overlay="host-gw", nodeNetwork="10.20.0.0/24", podNetwork="10.128.0.0/16", serviceNetwork="10.100.0.0/16"),
        pod("a", node="node1"),
        pod("b", node="node2"),
    )
    assert one.probe("a", "b").served_by == "default/b"
    assert two.probe("a", "b").served_by == "default/b"
    assert two.pod_ip("b").startswith("10.128.")
    # the labs cannot reach each other: separate underlays
    assert one.probe("a", two.pod_ip("b"), port=8080, timeout=0.3).verdict != "open"
    one.down()
    assert not [n for n in netns.listed() if n.startswith(one.name + "-")]
    assert two.probe("a", "b").verdict == "open", "the other lab is untouched"


def test_up_refuses_to_build_over_a_namespace_it_did_not_make(lab):
    squatter = f"{lab.name}-default.a"
    netns.create(squatter)
    try:
        with pytest.raises(LabError, match="were not made by lab"):
            lab.up(lab.doc(), pod("a"))
        assert netns.exists(squatter)
        assert not netns.exists(f"{lab.name}-node1"), "nothing was created"
        assert not lab.handle.exists(), "not even records"
    finally:
        netns.delete(squatter)

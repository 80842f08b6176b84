"""Link impairment on the underlay: a token-bucket rate limit here, netem delay and loss in the VM."""

from __future__ import annotations

import json
import statistics
import subprocess
import time

import pytest

from tests.helpers import pod

pytestmark = pytest.mark.kernel


def link(lab, *args, check=True):
    return lab.cli("link", "--lab", lab.name, *args, check=check)


def throughput_mbit(lab, src_ns: str, dst_ns: str, dst_ip: str) -> float:
    """iperf3 from src to dst for one second: the receiver's rate."""
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, "iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # until the server listens
            if "5201" in lab.sh(dst_ns, "ss", "-ltnH"):
                break
            time.sleep(0.02)
        out = lab.sh(src_ns, "iperf3", "-c", dst_ip, "-p", "5201", "-t", "1", "-J")
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.wait(timeout=10)


def test_rate_limit_with_a_token_bucket_then_cleared(lab):
    lab.up(lab.doc(externals=[{"name": "client"}]), pod("a"))
    node1, client = lab.node_ns("node1"), f"{lab.name}-client"
    client_ip = lab.topo.lab.externals[0].ip
    free = throughput_mbit(lab, node1, client, client_ip)
    out = link(lab, "node/node1", "--rate", "20mbit").stdout
    assert "rate 20mbit" in out and "tbf" in out
    assert "tbf" in lab.sh(node1, "tc", "qdisc", "show", "dev", "eth0"), "what a learner sees with tc"
    limited = throughput_mbit(lab, node1, client, client_ip)
    assert limited < 24 < free, (limited, free)
    assert limited > 10, "the limit, not a broken link"
    assert "cleared" in link(lab, "node/node1", "--clear").stdout
    assert "tbf" not in lab.sh(node1, "tc", "qdisc", "show", "dev", "eth0")
    assert json.loads(link(lab, "node/node1", "--json").stdout)["qdisc"].startswith("qdisc noqueue")


def test_links_set_in_the_topology_file_follow_it(lab):
    nodes = [{"name": "node1"}, {"name": "node2", "link": {"rate": "20mbit"}}]
    docs = lambda nodes: (lab.doc(nodes=nodes, externals=[{"name": "client"}]), pod("a"))  # noqa: E731
    lab.up(*docs(nodes))
    node2, node1 = lab.node_ns("node2"), lab.node_ns("node1")
    assert "tbf" in lab.sh(node2, "tc", "qdisc", "show", "dev", "eth0") and "rate 20Mbit" in lab.sh(node2, "tc", "qdisc", "show", "dev", "eth0")
    assert "noqueue" in lab.sh(node1, "tc", "qdisc", "show", "dev", "eth0")
    again = lab.up(*docs(nodes))
    assert again.plan.empty() and not again.to_dict()["changed"], "a second up changes nothing"
    client_ip = lab.topo.lab.externals[0].ip
    assert throughput_mbit(lab, node2, f"{lab.name}-client", client_ip) < 24
    lab.up(*docs([{"name": "node1"}, {"name": "node2", "link": {"rate": "50mbit"}}]))
    assert "rate 50Mbit" in lab.sh(node2, "tc", "qdisc", "show", "dev", "eth0")
    lab.up(*docs([{"name": "node1"}, {"name": "node2"}]))
    assert "noqueue" in lab.sh(node2, "tc", "qdisc", "show", "dev", "eth0"), "dropped from the file: cleared"


def test_a_topology_delay_without_netem_is_exit_3_and_creates_nothing(lab):
    """On this CI host's kernel; where netem exists the lab comes up with the delay."""
    from labctl.impair import tc
    from labctl.kernel import netns
    from labctl.state.store import LabDir

    path = lab.write(lab.doc(nodes=[{"name": "node1", "link": {"delay": "20ms"}}]), pod("a"))
    p = lab.cli("up", str(path), check=False)
    if tc.netem_available():
        assert p.returncode == 0 and "delay 20ms" in lab.sh(lab.node_ns("node1"), "tc", "qdisc", "show", "dev", "eth0")
        return
    assert p.returncode == 3 and "netem" in p.stderr, p.stderr
    assert not [n for n in netns.listed() if n.startswith(lab.name + "-")] and not LabDir(lab.name).exists()


def test_bad_impairments_are_exit_2_and_change_nothing(lab):
    lab.up(lab.doc(), pod("a"))
    for args, msg in [
        (["--delay", "5"], "a duration such as 20ms"),
        (["--loss", "150%"], "a percentage"),
        (["--rate", "fast"], "a rate such as 10mbit"),
        (["--jitter", "5ms"], "--jitter needs --delay"),
        (["--clear", "--rate", "1mbit"], "--clear takes no other option"),
    ]:
        p = link(lab, "node/node1", *args, check=False)
        assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)
    p = link(lab, "a", "--rate", "1mbit", check=False)
    assert p.returncode == 2 and "node/NAME or ext/NAME" in p.stderr
    p = link(lab, "node/nope", "--rate", "1mbit", check=False)
    assert p.returncode == 2 and "no node named 'nope'" in p.stderr
    assert "noqueue" in lab.sh(lab.node_ns("node1"), "tc", "qdisc", "show", "dev", "eth0")


def test_delay_without_netem_is_exit_3_and_changes_nothing(lab):
    """On this CI host's kernel (no sch_netem); on a kernel with netem the delay is simply set."""
    lab.up(lab.doc(), pod("a"))
    p = link(lab, "node/node1", "--delay", "50ms", check=False)
    qdisc = lab.sh(lab.node_ns("node1"), "tc", "qdisc", "show", "dev", "eth0")
    if p.returncode == 0:
        assert "netem" in qdisc and "delay 50ms" in qdisc
        return
    assert p.returncode == 3 and "netem" in p.stderr and "scripts/vm-test.sh" in p.stderr
    assert "noqueue" in qdisc


def rtts(lab, src: str, dst: str, n: int = 8) -> list[float]:
    return [lab.probe(src, dst, proto="icmp", timeout=2).rtt_ms for _ in range(n)]


@pytest.mark.stock_kernel
def test_netem_delay_grows_the_round_trip_and_loss_drops(lab):
    """netem holds every packet at least the delay less the jitter: the fastest
    round trip shows it, whatever the (emulated, noisy) CPU adds on top."""
    lab.up(lab.doc(externals=[{"name": "client"}]), pod("a"))
    before = min(rtts(lab, "ext/client", "node/node2"))
    assert before < 40, before
    out = link(lab, "node/node2", "--delay", "80ms", "--jitter", "1ms").stdout
    assert "delay 80ms ±1ms" in out and "netem" in out
    after = rtts(lab, "ext/client", "node/node2")
    assert min(after) >= 79 and statistics.median(after) - before <= 160, (before, after)
    assert min(rtts(lab, "ext/client", "node/node1")) < 40, "other links are untouched"
    link(lab, "node/node2", "--loss", "100%")
    assert lab.probe("ext/client", "node/node2", proto="icmp", timeout=0.5).verdict == "filtered"
    link(lab, "node/node2", "--clear")
    assert min(rtts(lab, "ext/client", "node/node2")) < 40
    # as the topology file sets it: a far zone for node1
    lab.up(lab.doc(nodes=[{"name": "node1", "link": {"delay": "60ms"}}, {"name": "node2"}], externals=[{"name": "client"}]), pod("a"))
    far = rtts(lab, "ext/client", "node/node1")
    assert min(far) >= 60 and statistics.median(far) - before <= 140, (before, far)

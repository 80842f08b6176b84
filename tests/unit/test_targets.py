import pytest

from labctl.errors import InvalidInput
from labctl.model.targets import default_port, resolve
from tests.helpers import dump, lab_doc, load, pod


@pytest.fixture
def topo():
    return load(dump(lab_doc(name="demo", externals=[{"name": "client"}]), pod("web", ports=(8080,), udp=(53,))))


def test_pods_nodes_externals_and_addresses(topo):
    web = resolve(topo, "web", role="TO")
    assert (web.label, web.ip, web.netns, web.kind) == ("default/web", "10.244.0.2", "demo-default.web", "pod")
    assert resolve(topo, "default/web", role="FROM").netns == "demo-default.web"
    assert resolve(topo, "node/node2", role="FROM").ip == "10.10.20.11"
    assert resolve(topo, "ext/client", role="FROM").netns == "demo-client"
    assert resolve(topo, "10.244.0.2", role="TO").pod is not None
    bare = resolve(topo, "192.0.2.1", role="TO")
    assert bare.netns is None and bare.kind == "ip"


def test_unknown_targets_suggest_names(topo):
    with pytest.raises(InvalidInput, match="did you mean default/web"):
        resolve(topo, "default/wbe", role="TO")
    with pytest.raises(InvalidInput, match="no node named 'node9'"):
        resolve(topo, "node/node9", role="FROM")
    with pytest.raises(InvalidInput, match="not from a bare address"):
        resolve(topo, "10.0.0.1", role="FROM")


def test_default_port_is_the_first_of_the_protocol(topo):
    web = resolve(topo, "web", role="TO")
    assert default_port(web, "tcp") == 8080 and default_port(web, "udp") == 53 and default_port(web, "icmp") is None


def test_probe_ports_walk_the_range_per_lab(tmp_path, monkeypatch):
    from labctl.probe import ports
    from labctl.state import store

    monkeypatch.setattr(store, "STATE_ROOT", tmp_path)
    store.LabDir("lab1").create()
    a = ports.reserve("lab1", 400)
    b = ports.reserve("lab1", 1)
    assert b == ports.port(a, 400), "the next block starts where the last one ended"
    block = {ports.port(a, i) for i in range(400)}
    assert len(block) == 400 and all(ports.LOW <= p < ports.HIGH for p in block)
    assert ports.port(ports.HIGH - 1, 1) == ports.LOW, "it wraps around"
    # 28,000 probes later, the first port comes back, not before
    c = ports.reserve("lab1", ports.SPAN - 401)
    assert ports.reserve("lab1") == a and c == ports.port(a, 401)
    assert ports.LOW <= ports.reserve("no-such-lab") < ports.HIGH

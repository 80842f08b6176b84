"""Parsing and every validation error: document, field path and message."""

import pytest

from labctl import registry
from tests.helpers import deployment, dump, lab_doc, load, namespace, one, pod, problems, svc, text

# -- what a valid file resolves to ------------------------------------------------


def test_defaults_resolve_node_ips_cidrs_and_pods():
    topo = load(dump(lab_doc(externals=[{"name": "client"}]), pod("a"), pod("b"), pod("c", node="node1")))
    n1, n2 = topo.lab.nodes
    assert (n1.ip, n1.pod_cidr) == ("10.10.20.10", "10.244.0.0/24")
    assert (n2.ip, n2.pod_cidr) == ("10.10.20.11", "10.244.1.0/24")
    assert topo.lab.externals[0].ip == "10.10.20.100"
    placed = {p.name: (p.node, p.ip) for p in topo.pods}
    assert placed == {"a": ("node1", "10.244.0.2"), "b": ("node2", "10.244.1.2"), "c": ("node1", "10.244.0.3")}
    assert registry.overlay(topo.lab.overlay).mtu == 1450
    assert set(topo.namespaces) >= {"default", "kube-system"}


def test_explicit_addresses_are_kept_and_skipped_by_the_allocator():
    topo = load(dump(lab_doc(nodes=[{"name": "n1"}, {"name": "n2", "ip": "10.10.20.10", "podCIDR": "10.244.0.0/24"}])))
    n1, n2 = topo.lab.nodes
    assert n2.ip == "10.10.20.10" and n1.ip == "10.10.20.11"
    assert n2.pod_cidr == "10.244.0.0/24" and n1.pod_cidr == "10.244.1.0/24"


def test_deployment_spreads_replicas_over_nodes():
    topo = load(dump(lab_doc(nodes=[{"name": "a"}, {"name": "b"}, {"name": "c"}]), pod("x", node="a"), deployment("web", 3)))
    nodes = [p.node for p in topo.pods if p.owner]
    assert sorted(nodes) == ["a", "b", "c"]
    assert [p.name for p in topo.pods if p.owner] == ["web-0", "web-1", "web-2"]


def test_namespaces_carry_their_name_label():
    topo = load(dump(lab_doc(), namespace("shop", {"team": "x"})))
    assert topo.namespaces["shop"] == {"team": "x", "kubernetes.io/metadata.name": "shop"}
    assert topo.namespaces["default"] == {"kubernetes.io/metadata.name": "default"}


def test_host_gw_keeps_the_full_mtu_and_nodes_default_to_one():
    topo = load(dump({"apiVersion": "labctl/v1", "kind": "Lab", "metadata": {"name": "x"}, "spec": {"overlay": "host-gw"}}))
    assert registry.overlay(topo.lab.overlay).mtu == 1500
    assert [n.name for n in topo.lab.nodes] == ["node1"]


# -- the file itself ----------------------------------------------------------------


def test_yaml_syntax_error_names_the_line():
    msg = one("apiVersion: labctl/v1\nkind: Lab\nmetadata: {name: x\n")
    assert "invalid YAML" in msg and "line" in msg


def test_duplicate_keys_are_refused():
    msg = one(
        text("""
        apiVersion: labctl/v1
        kind: Lab
        metadata: {name: x}
        spec:
          overlay: vxlan
          overlay: host-gw
    """)
    )
    assert "duplicate key 'overlay'" in msg


def test_the_first_document_must_be_the_lab():
    msg = one(dump(pod("a")))
    assert "the first document must be the Lab" in msg


def test_lab_after_other_documents_and_second_lab_are_refused():
    found = problems(dump(lab_doc(), pod("a"), lab_doc("other")))
    assert any("exactly one Lab" in p for p in found)
    found = problems(dump(namespace("x"), lab_doc()))
    assert any("must be the first document" in p for p in found)


def test_unknown_kind_lists_accepted_kinds():
    msg = one(dump(lab_doc(), {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}))
    assert msg.startswith("document 2 (line")
    assert "unknown kind 'ConfigMap'" in msg and "Pod (v1)" in msg and "Deployment (apps/v1)" in msg


def test_wrong_api_version_for_a_kind():
    msg = one(dump(lab_doc(), {"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "x"}}))
    assert "Deployment is 'apps/v1'" in msg


def test_unknown_field_in_a_pod_names_document_and_path():
    p = pod("web-0")
    p["spec"]["containers"][0]["ports"][0]["bogus"] = 1
    msg = one(dump(lab_doc(), p))
    assert "document 2 (line" in msg and "Pod default/web-0" in msg
    assert "spec.containers[0].ports[0].bogus: unknown field 'bogus'" in msg


def test_wrong_type_in_a_pod():
    p = pod("web-0")
    p["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    msg = one(dump(lab_doc(), p))
    assert "spec.containers[0].ports[0].containerPort: must be of type integer" in msg


def test_unknown_field_in_the_lab():
    d = lab_doc()
    d["spec"]["nodez"] = []
    msg = one(dump(d))
    assert "spec.nodez: unknown field 'nodez'" in msg and "document 1 (line 1, Lab t)" in msg


def test_bad_lab_name_and_enum():
    found = problems(dump(lab_doc(name="Demo_1", overlay="calico")))
    assert any("metadata.name: 'Demo_1' is not valid" in p for p in found)
    assert any("spec.overlay: must be one of 'vxlan', 'host-gw', 'bgp', 'ipip', not 'calico'" in p for p in found)


def test_all_problems_are_reported_together():
    bad = pod("Bad_Name", ports=(0,), node="nowhere")
    found = problems(dump(lab_doc(podNetwork="10.244.0.0/33"), bad, pod("x", namespace="missing")))
    assert len(found) >= 3
    assert any("podNetwork" in p for p in found)
    assert any("Bad_Name" in p for p in found)
    assert any("namespace 'missing' is not defined" in p for p in found)


# -- networks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,expect",
    [
        ("podNetwork", "10.244.0.0", "is not a CIDR"),
        ("podNetwork", "10.244.0.300/16", "is not a CIDR"),
        ("podNetwork", "10.244.0.1/16", "has host bits set; did you mean 10.244.0.0/16?"),
        ("podNetwork", "fd00::/64", "is not IPv4 (spec.ipFamilies[0] is IPv4)"),
        ("serviceNetwork", "10.244.128.0/17", "overlaps spec.podNetwork"),
        ("nodeNetwork", "10.96.5.0/24", "overlaps"),
        ("nodePortRange", "32767-30000", "is not a port range"),
        ("nodePortRange", "30000-70000", "is not a port range"),
        ("loadBalancerPool", "10.10.30.1-10.10.30.5", "is not inside nodeNetwork"),
        ("nodeCIDRMaskSize", 12, "larger than podNetwork"),
    ],
)
def test_network_problems(field, value, expect):
    found = problems(dump(lab_doc(**{field: value})))
    assert any(expect in p and f"spec.{field}" in p for p in found), found


def test_pool_of_pod_cidrs_exhausted():
    nodes = [{"name": f"n{i}"} for i in range(3)]
    msg = one(dump(lab_doc(podNetwork="10.244.0.0/23", nodes=nodes)))
    assert "spec.nodes[2]" in msg and "no /24 left for node 'n2'" in msg


def test_pool_of_node_addresses_exhausted():
    nodes = [{"name": f"n{i}"} for i in range(6)]  # a /29 has six host addresses, .1 is the gateway
    msg = one(dump(lab_doc(nodeNetwork="192.168.0.0/29", nodes=nodes)))
    assert "no address left for node 'n5'" in msg


def test_pool_of_pod_addresses_exhausted():
    pods = [pod(f"p{i}", node="node1", ports=()) for i in range(6)]
    msg = one(dump(lab_doc(nodeCIDRMaskSize=29), *pods))
    assert "document 7" in msg and "node node1's pod CIDR 10.244.0.0/29 has no address left for pod default/p5" in msg


def test_the_gateway_address_is_reserved():
    msg = one(dump(lab_doc(nodes=[{"name": "a", "ip": "10.10.20.1"}])))
    assert "spec.nodes[0].ip: 10.10.20.1 is the node network's gateway" in msg


def test_node_and_external_addresses_checked():
    found = problems(
        dump(
            lab_doc(
                nodes=[{"name": "a", "ip": "10.10.21.5"}, {"name": "b", "ip": "10.10.20.7"}],
                externals=[{"name": "c", "ip": "10.10.20.7"}, {"name": "d", "ip": "nope"}],
            )
        )
    )
    assert any("spec.nodes[0].ip: 10.10.21.5 is not a host address of nodeNetwork" in p for p in found)
    assert any("spec.externals[0].ip: 10.10.20.7 is already the address of spec.nodes[1]" in p for p in found)
    assert any("spec.externals[1].ip: 'nope' is not an IPv4 address" in p for p in found)


def test_node_pod_cidrs_checked():
    found = problems(
        dump(lab_doc(nodes=[{"name": "a", "podCIDR": "10.245.0.0/24"}, {"name": "b", "podCIDR": "10.244.0.0/16"}, {"name": "c", "podCIDR": "10.244.1.0/24"}]))
    )
    assert any("spec.nodes[0].podCIDR: 10.245.0.0/24 is not inside podNetwork" in p for p in found)
    assert any("spec.nodes[2].podCIDR: 10.244.1.0/24 overlaps spec.nodes[1].podCIDR" in p for p in found)


# -- names -------------------------------------------------------------------------------


def test_duplicate_and_invalid_host_names():
    found = problems(dump(lab_doc(nodes=[{"name": "a"}, {"name": "a"}, {"name": "Node_3"}, {"name": "underlay"}], externals=[{"name": "a"}])))
    assert any("spec.nodes[1].name: duplicate name 'a' (also spec.nodes[0])" in p for p in found)
    assert any("spec.externals[0].name: duplicate name 'a'" in p for p in found)
    assert any("spec.nodes[2].name: 'Node_3' is not a DNS-1123 label" in p for p in found)
    assert any("'underlay' is reserved" in p for p in found)


def test_duplicate_pods_including_deployment_made_ones():
    found = problems(dump(lab_doc(), deployment("web", 2), pod("web-1")))
    assert any("document 3" in p and "pod default/web-1 is already made by document 2" in p for p in found)


def test_duplicate_namespace_documents():
    msg = one(dump(lab_doc(), namespace("shop"), namespace("shop")))
    assert "namespace 'shop' is already defined by document 2" in msg


def test_invalid_namespace_and_pod_names():
    found = problems(dump(lab_doc(), namespace("Shop"), pod("Web")))
    assert any("Namespace Shop" in p and "not a DNS-1123 label" in p for p in found)
    assert any("Pod default/Web" in p and "not a DNS-1123 subdomain" in p for p in found)


def test_label_syntax():
    msg = one(dump(lab_doc(), pod("a", labels={"app": "has space"})))
    assert "metadata.labels.app: label value 'has space' is not valid" in msg


# -- pods ----------------------------------------------------------------------------------


def test_ports_out_of_range_and_bad_protocol():
    p = pod("a", ports=(0, 70000))
    p["spec"]["containers"][0]["ports"].append({"containerPort": 81, "protocol": "ICMP"})
    found = problems(dump(lab_doc(), p))
    assert any("spec.containers[0].ports[0].containerPort: 0 is out of range 1-65535" in x for x in found)
    assert any("spec.containers[0].ports[1].containerPort: 70000 is out of range" in x for x in found)
    assert any("spec.containers[0].ports[2].protocol: must be one of TCP, UDP, SCTP" in x for x in found)


def test_duplicate_ports_and_port_names():
    p = pod("a", ports=(80, 80))
    p["spec"]["containers"][0]["ports"][0]["name"] = "http"
    p["spec"]["containers"][0]["ports"][1]["name"] = "http"
    found = problems(dump(lab_doc(), p))
    assert any("duplicate port name 'http'" in x for x in found)
    assert any("80/TCP is already declared at spec.containers[0].ports[0]" in x for x in found)


def test_port_names_are_iana_service_names():
    p = pod("a")
    p["spec"]["containers"][0]["ports"][0]["name"] = "much-too-long-port-name"
    msg = one(dump(lab_doc(), p))
    assert "longer than 15" in msg


def test_service_port_names_are_dns_labels_but_target_ports_iana_names():
    """As the API server: a Service port's name is a DNS-1123 label (up to 63), a targetPort,
    container port or NetworkPolicy port name an IANA service name (up to 15)."""
    s = svc("web", {"app": "a"})
    s["spec"]["ports"][0]["name"] = "service-port-udp-81"  # upstream's NetworkPolicy e2e suite names its ports so
    topo = load(dump(lab_doc(), s))
    assert topo.service("default/web").ports[0].name == "service-port-udp-81"
    s["spec"]["ports"][0]["name"] = "a" * 64
    assert "spec.ports[0].name: " in one(dump(lab_doc(), s)) and "longer than 63" in one(dump(lab_doc(), s))
    s["spec"]["ports"][0]["name"] = "http"
    s["spec"]["ports"][0]["targetPort"] = "service-port-udp"
    assert "spec.ports[0].targetPort: port name 'service-port-udp' is longer than 15" in one(dump(lab_doc(), s))
    np = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"}}
    np["spec"] = {"podSelector": {}, "ingress": [{"ports": [{"port": "service-port-udp-81"}]}]}
    assert "spec.ingress[0].ports[0].port: port name 'service-port-udp-81' is longer than 15" in one(dump(lab_doc(), np))


def test_deployment_and_network_policy_names_are_dns_subdomains():
    np = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "Allow_All"}, "spec": {"podSelector": {}}}
    assert "NetworkPolicy default/Allow_All): metadata.name: 'Allow_All' is not a DNS-1123 subdomain" in one(dump(lab_doc(), np))
    assert "Deployment default/Web_1): metadata.name: 'Web_1' is not a DNS-1123 subdomain" in one(dump(lab_doc(), deployment("Web_1", 1)))
    np["metadata"]["name"] = "allow.all-v1"
    load(dump(lab_doc(), np, deployment("web.v1", 1)))


def test_pod_on_unknown_node():
    msg = one(dump(lab_doc(), pod("a", node="node9")))
    assert "spec.nodeName: no node named 'node9' in the lab (nodes: node1, node2)" in msg


def test_pod_in_undeclared_namespace():
    msg = one(dump(lab_doc(), pod("a", namespace="shop")))
    assert "metadata.namespace: namespace 'shop' is not defined: add a Namespace document for it" in msg


def test_unsupported_network_features_are_refused_not_ignored():
    p = pod("a")
    p["spec"]["hostNetwork"] = True
    p["spec"]["containers"][0]["ports"][0]["hostPort"] = 8080
    found = problems(dump(lab_doc(), p))
    assert any("spec.hostNetwork" in x and "not supported" in x for x in found)
    assert any("spec.containers[0].ports[0].hostPort" in x for x in found)


def test_deployment_selector_must_match_template():
    d = deployment("web", 2)
    d["spec"]["selector"]["matchLabels"] = {"app": "other"}
    msg = one(dump(lab_doc(), d))
    assert "spec.selector: selector does not match template labels" in msg


def test_container_command_is_kept_with_its_args():
    p = pod("a", command=["python3", "-m", "http.server"])
    p["spec"]["containers"][0]["args"] = ["9000"]
    topo = load(dump(lab_doc(), p))
    assert topo.pods[0].containers[0].command == ("python3", "-m", "http.server", "9000")
    assert topo.pods[0].served_ports() == []


# -- stable resolution against a running lab ---------------------------------------------------


def test_resolution_against_previous_keeps_addresses_and_nodes():
    first = load(dump(lab_doc(), pod("a"), pod("b"), pod("c")))
    again = load(dump(lab_doc(), pod("c"), pod("b"), pod("a")), previous=first)
    assert {p.key: (p.node, p.ip) for p in again.pods} == {p.key: (p.node, p.ip) for p in first.pods}


def test_a_new_pod_does_not_reuse_a_freed_address_at_once():
    first = load(dump(lab_doc(), pod("a", node="node1"), pod("b", node="node1")))
    assert [p.ip for p in first.pods] == ["10.244.0.2", "10.244.0.3"]
    second = load(dump(lab_doc(), pod("b", node="node1"), pod("c", node="node1")), previous=first)
    assert {p.name: p.ip for p in second.pods} == {"b": "10.244.0.3", "c": "10.244.0.4"}


def test_a_pod_moved_to_another_node_gets_an_address_there():
    first = load(dump(lab_doc(), pod("a", node="node1")))
    second = load(dump(lab_doc(), pod("a", node="node2")), previous=first)
    assert (second.pods[0].node, second.pods[0].ip) == ("node2", "10.244.1.2")


def test_a_new_node_keeps_existing_nodes_addresses():
    first = load(dump(lab_doc(nodes=[{"name": "a"}, {"name": "c"}])))
    second = load(dump(lab_doc(nodes=[{"name": "a"}, {"name": "b"}, {"name": "c"}])), previous=first)
    got = {n.name: (n.ip, n.pod_cidr) for n in second.lab.nodes}
    assert got["a"] == ("10.10.20.10", "10.244.0.0/24")
    assert got["c"] == ("10.10.20.11", "10.244.1.0/24")
    assert got["b"] == ("10.10.20.12", "10.244.2.0/24")


def test_the_kubernetes_documentation_examples_load_as_they_are():
    """The NetworkPolicy, Service and DNS pages' manifests, and shapes of upstream's e2e
    suites (appProtocol, ipFamilies, trafficDistribution, probes, resources)."""
    from pathlib import Path

    examples = (Path(__file__).parent.parent / "golden" / "kubernetes-examples.yaml").read_text()
    head = dump(
        lab_doc(loadBalancerPool="10.10.20.200-10.10.20.220", dns=True),
        namespace("myproject", {"project": "myproject"}),
        namespace("prod"),
    )
    topo = load(head + "---\n" + examples)
    assert {s.key for s in topo.services} >= {"default/nginx-service", "default/my-service", "prod/my-extname", "default/busybox-subdomain", "default/h2c"}
    assert topo.service("default/my-nodeport").ports[0].node_port == 30007
    assert {p.name for p in topo.policies} == {"test-network-policy", "multi-port-egress", "default-deny-all", "allow-all-ingress", "dns-egress"}
    assert len([p for p in topo.pods if p.name.startswith("web-")]) == 2

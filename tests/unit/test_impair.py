"""Link impairment: parsing (options and the topology's link fields), tc commands, plans."""

from __future__ import annotations

import pytest

from labctl.errors import InvalidInput
from labctl.impair import tc
from labctl.plan.topology import plan
from tests.helpers import dump, lab_doc, load, problems


def test_units_as_tc_reads_them():
    imp = tc.parse(delay="1.5ms", jitter="500us", loss="0.5%", rate="512kbit")
    assert (imp.delay_ms, imp.jitter_ms, imp.loss_pct, imp.rate_bps) == (1.5, 0.5, 0.5, 512e3)
    assert tc.parse(rate="1mbps").rate_bps == 8e6, "tc's bps are bytes per second"
    assert tc.parse(delay="1s").delay_ms == 1000
    assert imp.describe() == "delay 1.5ms ±0.5ms, loss 0.5%, rate 512kbit"


def test_rate_alone_is_a_token_bucket_and_anything_else_netem():
    [tbf] = tc.commands(tc.parse(rate="10mbit"))
    assert tbf[:6] == ["qdisc", "replace", "dev", "eth0", "root", "tbf"] and tbf[6:8] == ["rate", "10000000bit"]
    [netem] = tc.commands(tc.parse(delay="50ms", jitter="5ms", loss="1%", rate="10mbit"))
    assert netem == ["qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "50ms", "5ms", "loss", "1%", "rate", "10000000bit"]
    assert tc.commands(tc.Impairment()) == [["qdisc", "del", "dev", "eth0", "root"]]


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"delay": "5"}, "--delay '5': a duration"),
        ({"loss": "101%"}, "--loss '101%': a percentage"),
        ({"rate": "0mbit"}, "--rate '0mbit': a rate"),
        ({"jitter": "1ms"}, "--jitter needs --delay"),
    ],
)
def test_bad_options_name_the_option(kw, msg):
    with pytest.raises(InvalidInput) as e:
        tc.parse(**kw)
    assert str(e.value).startswith(msg)


def test_link_fields_are_validated_with_their_path():
    doc = lab_doc(nodes=[{"name": "node1", "link": {"delay": "fast", "rate": "1mbit"}}], externals=[{"name": "x", "link": {"jitter": "1ms", "loss": "x"}}])
    found = problems(dump(doc))
    assert any("spec.nodes[0].link.delay: 'fast': a duration such as 20ms" in p for p in found), found
    assert any("spec.externals[0].link.jitter: needs delay" in p for p in found), found
    assert any("spec.externals[0].link.loss: 'x': a percentage" in p for p in found), found
    assert len(found) == 3
    assert any("unknown field 'burst'" in p for p in problems(dump(lab_doc(nodes=[{"name": "n", "link": {"burst": "1"}}]))))


def test_plans_apply_only_links_that_changed():
    def topo(link2, prev=None):
        return load(dump(lab_doc(nodes=[{"name": "node1", "link": {"rate": "1mbit"}}, {"name": "node2", **({"link": link2} if link2 else {})}])), previous=prev)

    first = topo({"delay": "10ms"})
    assert plan(None, first).links == [("node", "node1", {"rate": "1mbit"}), ("node", "node2", {"delay": "10ms"})]
    assert plan(first, topo({"delay": "10ms"}, first)).empty(), "the same links: nothing to do"
    changed = plan(first, topo({"delay": "20ms"}, first))
    assert changed.links == [("node", "node2", {"delay": "20ms"})] and changed.summary()["linksChanged"] == 1
    assert plan(first, topo(None, first)).links == [("node", "node2", {})], "a link dropped from the file is cleared"

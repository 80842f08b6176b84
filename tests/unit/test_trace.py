"""labctl trace's parsing of xtables-monitor --trace output (pure)."""

from __future__ import annotations

from labctl.probe import trace as T

SAMPLE = """PACKET: 2 6ea78b50 IN=cni0 MACSRC=a:58:a:f4:0:3 MACPROTO=0800 SRC=10.244.0.3 DST=10.96.0.11 LEN=40 TTL=64 ID=1 SPORT=47179 DPORT=80 SYN
 TRACE: 2 6ea78b50 raw:PREROUTING:rule:0x2:CONTINUE  -4 -t raw -A PREROUTING -p tcp -m tcp --sport 47179 -m comment --comment "labctl trace" -j TRACE
 TRACE: 2 6ea78b50 raw:PREROUTING:policy:ACCEPT
PACKET: 2 6ea78b50 IN=cni0 MACSRC=a:58:a:f4:0:3 MACPROTO=0800 SRC=10.244.0.3 DST=10.96.0.11 LEN=40 TTL=64 ID=1 SPORT=47179 DPORT=80 SYN
 TRACE: 2 6ea78b50 nat:PREROUTING:rule:0x29:JUMP:KUBE-SERVICES  -4 -t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
 TRACE: 2 6ea78b50 nat:KUBE-SEP-4EX2N4PG4ASNZOBF:rule:0x63:ACCEPT  -4 -t nat -A KUBE-SEP-4EX2N4PG4ASNZOBF -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.2.2:8080
PACKET: 2 9d5099b0 IN=cni0 OUT=flannel.1 SRC=10.244.0.3 DST=10.244.2.2 LEN=40 TTL=63 ID=1 SPORT=47179 DPORT=8080 SYN
 TRACE: 2 9d5099b0 filter:FLANNEL-FWD:rule:0x23:ACCEPT  -4 -t filter -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
 TRACE: 2 9d5099b0 nat:KUBE-POSTROUTING:rule:0x46:0xfffffffb  -4 -t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
 TRACE: 2 9d5099b0 nat:POSTROUTING:return:
 TRACE: 2 9d5099b0 nat:POSTROUTING:policy:ACCEPT
PACKET: 2 c07b5f6d IN=flannel.1 OUT=cni0 SRC=10.244.2.2 DST=10.244.0.3 LEN=40 TTL=63 ID=0 SPORT=8080 DPORT=47179 SYN ACK
 TRACE: 2 c07b5f6d filter:KUBE-FORWARD:rule:0x22:ACCEPT  -4 -t filter -A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
"""


def rules_only(hops):
    return [h for h in hops if h["kind"] == "netfilter"]


def test_hops_come_in_order_with_rules_as_iptables_save_prints_them_and_the_dnat():
    hops = rules_only(T.parse(SAMPLE, "node/node1", 47179))
    assert [h["table"] for h in hops] == ["nat", "nat", "filter", "nat", "nat", "filter"], "the raw table's own marking is left out"
    assert hops[0]["rule"] == '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' and hops[0]["verdict"] == "JUMP:KUBE-SERVICES"
    assert hops[1]["nat"] == {"field": "dst", "before": "10.96.0.11:80", "after": "10.244.2.2:8080"}
    assert hops[3]["verdict"] == "RETURN" and hops[4]["rule"] == "(policy of POSTROUTING)"
    assert [h["direction"] for h in hops] == ["request"] * 5 + ["reply"]
    assert T.outcome(hops) == ("10.244.2.2:8080", None)


def test_the_marking_rules_take_only_the_probes_syn_and_syn_ack_by_what_nat_keeps():
    got = [" ".join(r) for r in T.rules("tcp", 40000, 0x1234)]
    assert len(got) == 4 and all("--comment labctl trace -j TRACE" in r and "-t raw -I" in r for r in got)
    assert "--tcp-flags SYN,ACK SYN -m u32 --u32 0>>22&0x3C@4=0x1234 " in got[0], "the SYN by its sequence number"
    assert "--tcp-flags SYN,ACK SYN,ACK -m u32 --u32 0>>22&0x3C@8=0x1235 " in got[1], "the SYN-ACK by its acknowledgement"
    udp = [" ".join(r) for r in T.rules("udp", 40000, 0x1234)]
    assert "--u32 0>>22&0x3C@8=0x1234" in udp[0] and "--dport 40000" in udp[1] and "--tcp-flags" not in " ".join(udp)
    assert " ".join(T.rules("tcp", 1, 2**32 - 1)[1]).count("@8=0x0 ") == 1, "the acknowledgement wraps"


def test_direction_comes_from_the_flags_so_a_masquerade_changing_ports_does_not_lose_the_packet():
    assert T.direction({"SPORT": "61000", "DPORT": "8080", "FLAGS": "SYN"}, "tcp", 40000) == "request"
    assert T.direction({"SPORT": "8080", "DPORT": "61000", "FLAGS": "SYN ACK"}, "tcp", 40000) == "reply"
    assert T.direction({"SPORT": "61000", "DPORT": "53"}, "udp", 40000) == "request"
    assert T.direction({"SPORT": "53", "DPORT": "40000"}, "udp", 40000) == "reply"


NFT_SAMPLE = """trace id c895a16c ip labctl-trace pre packet: iif "cni0" ip saddr 10.244.0.3 ip daddr 10.96.0.11 ip ttl 64 tcp sport 50123 tcp dport 80 tcp flags == syn
trace id c895a16c ip labctl-trace pre rule tcp sport 50123 tcp flags syn / syn,ack meta nftrace set 1 (verdict continue)
trace id c895a16c ip kube-proxy nat-prerouting packet: iif "cni0" ip saddr 10.244.0.3 ip daddr 10.96.0.11 tcp sport 50123 tcp dport 80 tcp flags == syn
trace id c895a16c ip kube-proxy nat-prerouting rule jump services (verdict jump services)
trace id c895a16c ip kube-proxy endpoint-CFQGW5QF-default/web/tcp/http__10.244.0.2/8080 rule meta l4proto tcp dnat to 10.244.0.2:8080 (verdict accept)
trace id c895a16c ip kube-proxy filter-forward packet: iif "cni0" oif "cni0" ip saddr 10.244.0.3 ip daddr 10.244.0.2 tcp sport 50123 tcp dport 8080 tcp flags == syn
trace id c895a16c ip filter FORWARD rule  counter packets 7 bytes 420 jump FLANNEL-FWD (verdict jump FLANNEL-FWD)
trace id c895a16c ip kube-proxy filter-forward policy accept
trace id d2a7b44a ip kube-proxy filter-forward packet: iif "cni0" ip saddr 10.244.0.2 ip daddr 10.244.0.3 tcp sport 8080 tcp dport 50123 tcp flags == 0x12
trace id d2a7b44a ip filter LABCTL-NETPOL rule ct state related,established  counter packets 0 bytes 0 return (verdict return)
"""


def test_nft_monitor_trace_lines_become_hops_with_the_dnat_and_no_counters():
    hops = rules_only(T.parse_nft(NFT_SAMPLE, "node/node1", 50123))
    assert [h["chain"] for h in hops] == [
        "nat-prerouting",
        "endpoint-CFQGW5QF-default/web/tcp/http__10.244.0.2/8080",
        "FORWARD",
        "filter-forward",
        "LABCTL-NETPOL",
    ]
    assert hops[1]["nat"] == {"field": "dst", "before": "10.96.0.11:80", "after": "10.244.0.2:8080"}
    assert hops[2]["rule"] == "counter jump FLANNEL-FWD" and hops[2]["verdict"] == "jump FLANNEL-FWD", "counter values move: left out"
    assert hops[3]["rule"] == "(policy of filter-forward)" and hops[3]["verdict"] == "ACCEPT"
    assert [h["direction"] for h in hops] == ["request"] * 4 + ["reply"]
    text = T.nft_rules("tcp", 50123, 77)
    assert text.startswith("table ip labctl-trace {") and "priority -350" in text and "tcp sequence 77 tcp flags & (syn|ack) == syn meta nftrace set 1" in text
    assert "tcp ackseq 78 tcp flags & (syn|ack) == syn|ack meta nftrace set 1" in text
    assert "@th,64,32 0x4d" in T.nft_rules("udp", 50123, 77), "UDP: the payload's first word"

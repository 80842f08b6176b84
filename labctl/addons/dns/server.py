"""Answers of the cluster DNS, from the records labctl.addons.dns.records computes.

Used by the responder, which holds the DNS pod's sockets: `Answerer.handle`
takes a query as it came off the wire and returns what to send back, or says
the query must go to the upstream (`forward`, run by the responder in a
thread inside the DNS pod's namespace, so the forwarded query leaves from the
pod, through its node, as CoreDNS's would).

    <a-b-c-d>.<ns>.pod.<zone>  A a.b.c.d, for any well-formed address and
                               namespace (CoreDNS's `pods insecure`, kubeadm's
                               default)
    in the cluster zone        authoritative: the records, NODATA for a name
                               that exists without that type (or only has names
                               under it), NXDOMAIN otherwise; SOA in the
                               authority section of negative answers
    reverse names of the       the same, for PTR records
    service and pod networks
    anything else              forwarded when there is an upstream, else
                               SERVFAIL at once (a lookup never hangs)

Names are matched case-insensitively and answered with the case asked. Over
UDP an answer larger than the client's buffer (512 bytes without EDNS) is sent
truncated (TC), so the client asks again over TCP.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

FORWARD = object()
FORWARD_TIMEOUT = 2.0


def formerr(wire: bytes) -> bytes | None:
    """A header-only FORMERR for something that is not a DNS message (as servers
    answer garbage with a readable ID): the probes of `labctl verify` get a reply."""
    if len(wire) < 2:
        return None
    return wire[:2] + bytes([0x80, dns.rcode.FORMERR]) + bytes(8)


def _text(rtype: str, value: Any) -> str:
    if rtype == "SRV":
        return " ".join(map(str, value))
    if rtype == "SOA":
        return " ".join(map(str, value))
    if rtype == "TXT":
        return f'"{value}"'
    return str(value)


class Answerer:
    def __init__(self, cfg: dict[str, Any]):
        self.origin = dns.name.from_text(cfg["zone"])
        self.records: dict[str, dict[str, list[Any]]] = cfg["records"]
        self.ttl = int(cfg.get("ttl", 5))
        self.reverse = [ipaddress.ip_network(c) for c in cfg.get("reverse") or []]
        self.upstream: tuple[str, int] | None = tuple(cfg["upstream"]) if cfg.get("upstream") else None  # type: ignore[assignment]
        # names that exist because something lives under them (svc.<zone>, <ns>.svc.<zone>, _tcp...)
        self.existing: set[str] = set()
        for name in self.records:
            n = dns.name.from_text(name)
            while n != dns.name.root and n.is_subdomain(self.origin):
                self.existing.add(n.to_text().lower())
                n = n.parent()
        self.soa = dns.rrset.from_text_list(self.origin, self.ttl, "IN", "SOA", [_text("SOA", self.records[self.origin.to_text().lower()]["SOA"][0])])

    # -- deciding ----------------------------------------------------------------------

    def _ours(self, qname: dns.name.Name) -> bool:
        if qname.is_subdomain(self.origin):
            return True
        try:
            addr = ipaddress.ip_address(dns.reversename.to_address(qname))
        except Exception:
            return False
        return any(addr.version == net.version and addr in net for net in self.reverse)

    def handle(self, wire: bytes, tcp: bool) -> bytes | object | None:
        """The reply's wire form; FORWARD (send `wire` upstream); or None (drop)."""
        try:
            q = dns.message.from_wire(wire)
        except Exception:
            return formerr(wire)
        if q.flags & dns.flags.QR:
            return None
        if q.opcode() != dns.opcode.QUERY:
            return self._status(q, dns.rcode.NOTIMP, tcp)
        if len(q.question) != 1:
            return self._status(q, dns.rcode.FORMERR, tcp)
        qname = q.question[0].name
        if not self._ours(qname):
            return FORWARD if self.upstream else self._status(q, dns.rcode.SERVFAIL, tcp)
        try:
            return self._finish(q, self._answer(q), tcp)
        except Exception as e:  # a record this code cannot render must not take the server down
            print(f"dns: {qname}: {type(e).__name__}: {e}", flush=True)
            return self._status(q, dns.rcode.SERVFAIL, tcp)

    # -- answering ---------------------------------------------------------------------

    def _rrset(self, owner: dns.name.Name, rtype: str, values: list[Any]) -> dns.rrset.RRset:
        return dns.rrset.from_text_list(owner, self.ttl, "IN", rtype, [_text(rtype, v) for v in values])

    def _answer(self, q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA | dns.flags.RA
        question = q.question[0]
        qname, qtype = question.name, question.rdtype
        key = qname.to_text().lower()
        node = self.records.get(key) or self._pod(qname)
        if node is None:
            r.set_rcode(dns.rcode.NOERROR if key in self.existing else dns.rcode.NXDOMAIN)
            r.authority.append(self.soa)
            return r
        wanted = dns.rdatatype.to_text(qtype)
        if "CNAME" in node and wanted != "CNAME":
            r.answer.append(self._rrset(qname, "CNAME", node["CNAME"]))
            target = dns.name.from_text(node["CNAME"][0])
            chased = self.records.get(target.to_text().lower()) if target.is_subdomain(self.origin) else None
            if chased and wanted in chased:
                r.answer.append(self._rrset(target, wanted, chased[wanted]))
            return r
        types = list(node) if qtype == dns.rdatatype.ANY else [wanted]
        for rtype in types:
            if rtype in node:
                r.answer.append(self._rrset(qname, rtype, node[rtype]))
        if not r.answer:
            r.authority.append(self.soa)  # NODATA
        for rrset in list(r.answer):
            if rrset.rdtype in (dns.rdatatype.SRV, dns.rdatatype.NS):  # the targets' addresses, as CoreDNS adds them
                for rd in rrset:
                    target = rd.target
                    for rtype in ("A", "AAAA"):
                        addrs = self.records.get(target.to_text().lower(), {}).get(rtype)
                        if addrs:
                            r.additional.append(self._rrset(target, rtype, addrs))
        return r

    def _pod(self, qname: dns.name.Name) -> dict[str, list[Any]] | None:
        """`<a-b-c-d>.<ns>.pod.<zone>`: an A record of the address the name spells
        (`<fd00--1>.<ns>.pod.<zone>`: an AAAA record, the colons spelt as dashes)."""
        labels = qname.relativize(self.origin).labels if qname.is_subdomain(self.origin) else ()
        if len(labels) != 3 or labels[2].lower() != b"pod":
            return None
        text = labels[0].decode()
        try:
            ip = ipaddress.ip_address(text.replace("-", ".") if text.count("-") == 3 else text.replace("-", ":"))
        except ValueError:
            return None
        return {"AAAA" if ip.version == 6 else "A": [str(ip)]}

    def _status(self, q: dns.message.Message, rcode: int, tcp: bool) -> bytes:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA
        r.set_rcode(rcode)
        return self._finish(q, r, tcp)

    @staticmethod
    def _finish(q: dns.message.Message, r: dns.message.Message, tcp: bool) -> bytes:
        limit = 65535 if tcp else max(512, q.payload if q.edns >= 0 else 512)
        try:
            return r.to_wire(max_size=limit)
        except dns.exception.TooBig:
            t = dns.message.make_response(q)
            t.flags |= dns.flags.AA | dns.flags.RA | dns.flags.TC
            return t.to_wire(max_size=limit)

    # -- forwarding --------------------------------------------------------------------

    def forward(self, wire: bytes, tcp: bool) -> bytes:
        """Ask the upstream (blocking: run it in a thread inside the DNS pod's
        namespace); SERVFAIL when it does not answer in time."""
        assert self.upstream
        q = dns.message.from_wire(wire)
        host, port = self.upstream
        try:
            if tcp:
                r = dns.query.tcp(q, host, timeout=FORWARD_TIMEOUT, port=port)
            else:
                r = dns.query.udp(q, host, timeout=FORWARD_TIMEOUT, port=port, ignore_unexpected=True)
                if r.flags & dns.flags.TC:
                    r = dns.query.tcp(q, host, timeout=FORWARD_TIMEOUT, port=port)
        except (dns.exception.DNSException, OSError):
            return self._status(q, dns.rcode.SERVFAIL, tcp)
        return self._finish(q, r, tcp)

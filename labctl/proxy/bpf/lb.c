// SPDX-License-Identifier: GPL-2.0
/*
 * labctl's eBPF service datapath (proxyMode: ebpf), Cilium's per-packet load
 * balancing cut down to what a lab needs, for reading:
 *
 *   from_container  tc ingress of a pod's host-side veth (packets the pod sends):
 *                   a Service frontend (scope internal) -> pick a backend
 *                   (conntrack keeps the choice, sessionAffinity ClientIP keeps it
 *                   per client) -> DNAT; the backend is the client itself
 *                   (hairpin) -> also SNAT to 169.254.42.1 and hand it back; no
 *                   backend -> a TCP reset. Otherwise a reply of a connection
 *                   translated on this node -> its source back to the frontend.
 *   to_container    tc egress of the same veth (packets to the pod): a reply of a
 *                   translated connection -> its source back to the Service.
 *   from_netdev     tc ingress of the node's eth0: replies first (a SNATed
 *                   connection's, a node's own), then NodePort, LoadBalancer and
 *                   external IP frontends (scope external): DNAT, and with
 *                   externalTrafficPolicy Cluster and a backend on another node,
 *                   SNAT to the node's address.
 *   from_host       tc egress of the node's eth0: what the node itself sends to a
 *                   frontend (scope internal) -> DNAT, then out of the device the
 *                   FIB names for the backend (bpf_redirect_neigh).
 *   to_host         tc ingress of cni0 and the overlay device: replies to the
 *                   node's own translated connections.
 *
 * Maps (labctl pins them per node under /sys/fs/bpf/labctl/<lab>/<node>/):
 *   lb4_services  {vip, port, slot, proto, scope} -> slot 0: {count, rev_nat,
 *                 flags, affinity timeout}; slot n: {backend id}
 *   lb4_backends  backend id -> {address, port, local to this node}
 *   lb4_revnat    rev_nat index -> {frontend address, port}
 *   ct4           a translated connection's tuple after NAT -> {rev_nat, backend,
 *                 the client's own address and port when an SNAT replaced them};
 *                 with flags CT_SERVICE, the tuple before NAT -> the chosen
 *                 backend (and the SNAT port)
 *   lb4_affinity  {client, rev_nat} -> {backend id, last used}
 *   lb4_config    [0] -> {the node's address}
 *   lb4_src_range {rev_nat, source prefix} (LPM) -> a LoadBalancer IP's allowed sources
 *
 * Built with clang against the kernel's UAPI headers (no CO-RE), so one object
 * loads on this host's kernel and on the stock-kernel VM's.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define CT_SERVICE 1
#define CT_HOST 1 /* entry flags */
#define REV_POD 0     /* into a pod: the source back to the frontend, the destination back to the client */
#define REV_INGRESS 1 /* in on eth0: an SNAT undone (the source waits for eth0's egress), or a node's own reply */
#define REV_EGRESS 2  /* out of eth0: the source back to the frontend (after the node's netfilter saw the backend) */
#define REV_HOST 3    /* into the node's stack from cni0 or the overlay: its own connections' replies */
#define SVC_AFFINITY 1
#define SVC_DROP 2 /* no endpoint here for a Local policy, some elsewhere: drop, not reject */
#define SVC_SNAT 4 /* externalTrafficPolicy Cluster: SNAT to the node (the client is seen as a node address) */
#define SVC_FIREWALL 8 /* loadBalancerSourceRanges: only sources in lb4_src_range */
#define BACKEND_LOCAL 1
#define SCOPE_INTERNAL 0
#define SCOPE_EXTERNAL 1
#define MAX_CHECKED_SLOTS 256 /* a backend in a later slot is not found still there: its connections choose again */
#define LOOPBACK 0xa9fe2a01 /* 169.254.42.1, Cilium's IPV4_LOOPBACK */

struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

struct lb4_service {
	__u32 backend_id; /* slot 0: the affinity timeout in seconds */
	__u16 count;
	__u16 rev_nat;
	__u8 flags;
	__u8 kind;	  /* ClusterIP, NodePort...: for `labctl bpf lb list`, not read here */
	__u16 generation; /* slot 0: changes with the set of backends (a connection then checks its own) */
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags; /* BACKEND_LOCAL */
};

struct lb4_revnat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 flags;
	__u8 pad[2];
};

struct ct4_entry {
	__u64 last_seen;
	__u32 backend_id;
	__u16 rev_nat;
	__be16 nat_port;    /* CT_SERVICE: the source port the connection was given */
	__be32 client;	    /* after NAT: the client's address an SNAT replaced (0: none) */
	__be16 client_port; /* and its port */
	__u8 flags;	    /* CT_HOST: a connection the node itself opened */
	__u8 pad;
	__be32 nat_addr;    /* CT_SERVICE: the source address the connection was given */
	__u16 generation;   /* CT_SERVICE: the service's generation its backend was checked against */
	__u16 pad2;
};

struct src_range_key {
	__u32 prefixlen; /* 32 (rev_nat and pad) + the range's mask */
	__u16 rev_nat;
	__u16 pad;
	__be32 addr;
};

struct config {
	__be32 node_ip;
	__u32 pad;
};

struct aff_key {
	__be32 client;
	__u16 rev_nat;
	__u16 pad;
};

struct aff_entry {
	__u64 last_used;
	__u32 backend_id;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* memory for the entries a node has, not the most it may have */
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_revnat);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct4_entry);
	__uint(max_entries, 16384); /* an LRU is preallocated: sized for a lab, per node */
} ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct aff_key);
	__type(value, struct aff_entry);
	__uint(max_entries, 4096);
} lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} lb4_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct src_range_key);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} lb4_src_range SEC(".maps");

/* Offsets in the frame: Ethernet, then IPv4 with its options. */
#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + 10)
#define IP_SRC_OFF (IP_OFF + 12)
#define IP_DST_OFF (IP_OFF + 16)

struct flow {
	__be32 saddr, daddr;
	__be16 sport, dport;
	__u8 proto;
	__u32 l4; /* offset of the L4 header */
};

static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	if (ip->frag_off & bpf_htons(0x1fff)) /* a later fragment has no ports */
		return -1;
	f->l4 = ETH_HLEN + ip->ihl * 4;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, f->l4, ports, 4) < 0)
		return -1;
	f->sport = ports[0];
	f->dport = ports[1];
	return 0;
}

static __always_inline __u32 l4_csum_off(struct flow *f)
{
	return f->l4 + (f->proto == IPPROTO_TCP ? 16 : 6);
}

/* Rewrite one address (at IP_SRC_OFF or IP_DST_OFF) and its port, fixing the IP
 * checksum and the L4 checksum (whose pseudo-header holds the address). */
static __always_inline int rewrite(struct __sk_buff *skb, struct flow *f, int dst, __be32 from, __be32 to, __be16 pfrom, __be16 pto)
{
	__u32 csum = l4_csum_off(f);
	__u64 mangled = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (from != to) {
		if (bpf_l4_csum_replace(skb, csum, from, to, BPF_F_PSEUDO_HDR | mangled | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &to, 4, 0) < 0)
			return -1;
	}
	if (pfrom != pto) {
		if (bpf_l4_csum_replace(skb, csum, pfrom, pto, mangled | 2) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, f->l4 + (dst ? 2 : 0), &pto, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/* Back out of the veth it came from: the frame goes to its sender now. */
static __always_inline int bounce(struct __sk_buff *skb)
{
	__u8 macs[2 * ETH_ALEN], swapped[2 * ETH_ALEN];
	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(swapped, macs + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(swapped + ETH_ALEN, macs, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* No backend: answer a SYN with a reset from the Service's address, in place,
 * back out of the veth it came from (as kube-proxy's REJECT does with
 * --reject-with tcp-reset / icmp-port-unreachable). Other packets are dropped. */
static __always_inline int reject(struct __sk_buff *skb, struct flow *f)
{
	if (f->proto != IPPROTO_TCP)
		return TC_ACT_SHOT;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end || ip->ihl != 5)
		return TC_ACT_SHOT;
	struct tcphdr *tcp = (void *)ip + sizeof(*ip);
	if ((void *)(tcp + 1) > end || !tcp->syn || tcp->ack)
		return TC_ACT_SHOT;
	__u32 seq = bpf_ntohl(tcp->seq);
	__u16 payload = bpf_ntohs(ip->tot_len) - 20 - tcp->doff * 4;
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__be32 a = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = a;
	__be16 p = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = p;
	/* a bare RST,ACK: header only, no options */
	ip->tot_len = bpf_htons(40);
	ip->ttl = 64;
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000);
	ip->check = 0;
	__u32 ipsum = bpf_csum_diff(0, 0, (__be32 *)ip, 20, 0);
	ipsum = (ipsum & 0xffff) + (ipsum >> 16);
	ipsum = (ipsum & 0xffff) + (ipsum >> 16);
	ip->check = ~ipsum & 0xffff;
	__u32 ack = seq + 1 + payload;
	tcp->ack_seq = bpf_htonl(ack);
	tcp->seq = 0;
	tcp->doff = 5;
	tcp->res1 = 0;
	tcp->cwr = tcp->ece = tcp->urg = tcp->psh = tcp->syn = tcp->fin = 0;
	tcp->rst = 1;
	tcp->ack = 1;
	tcp->window = 0;
	tcp->urg_ptr = 0;
	tcp->check = 0;
	struct {
		__be32 src, dst;
		__u8 zero, proto;
		__be16 len;
	} pseudo = {ip->saddr, ip->daddr, 0, IPPROTO_TCP, bpf_htons(20)};
	__u32 sum = bpf_csum_diff(0, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
	sum = bpf_csum_diff(0, 0, (__be32 *)tcp, 20, sum);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	tcp->check = ~sum & 0xffff;
	if (bpf_skb_change_tail(skb, ETH_HLEN + 40, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, 0);
}

/* Is backend `id` still one of the service's slots? (a connection whose backend
 * left the Service, or stopped being ready, chooses again) */
static __always_inline int in_service(struct lb4_key *key, struct lb4_service *svc, __u32 id)
{
	for (__u16 s = 1; s <= MAX_CHECKED_SLOTS; s++) {
		if (s > svc->count)
			break;
		struct lb4_key k = *key;
		k.slot = s;
		struct lb4_service *slot = bpf_map_lookup_elem(&lb4_services, &k);
		if (slot && slot->backend_id == id)
			return 1;
	}
	return 0;
}

static __always_inline struct lb4_backend *pick(struct lb4_key *key, struct lb4_service *svc, struct flow *f, __u32 *id)
{
	__u64 now = bpf_ktime_get_ns();
	struct aff_key ak = {.client = f->saddr, .rev_nat = svc->rev_nat};
	if (svc->flags & SVC_AFFINITY) {
		struct aff_entry *a = bpf_map_lookup_elem(&lb4_affinity, &ak);
		if (a && now - a->last_used < (__u64)svc->backend_id * 1000000000ULL) {
			/* still one of the service's backends? (its slots are rewritten on a change) */
			struct lb4_backend *b = in_service(key, svc, a->backend_id) ? bpf_map_lookup_elem(&lb4_backends, &a->backend_id) : 0;
			if (b) {
				a->last_used = now;
				*id = a->backend_id;
				return b;
			}
		}
	}
	struct lb4_key k = *key;
	k.slot = (bpf_get_prandom_u32() % svc->count) + 1;
	struct lb4_service *slot = bpf_map_lookup_elem(&lb4_services, &k);
	if (!slot)
		return 0;
	struct lb4_backend *b = bpf_map_lookup_elem(&lb4_backends, &slot->backend_id);
	if (!b)
		return 0;
	*id = slot->backend_id;
	if (svc->flags & SVC_AFFINITY) {
		struct aff_entry a = {.last_used = now, .backend_id = slot->backend_id};
		bpf_map_update_elem(&lb4_affinity, &ak, &a, BPF_ANY);
	}
	return b;
}

/* A reply of a translated connection, `f` as it travels, undone as `where` allows
 * (a packet with a source address of the node must not come in from outside: the
 * kernel drops it as a martian, so a frontend that is the node's address is put
 * back on the way out). Returns 0 (not one), 1 (rewritten), 2 (its destination
 * was rewritten too) or -1. */
static __always_inline int reverse(struct __sk_buff *skb, struct flow *f, int where)
{
	struct ct4_key k = {.saddr = f->daddr, .daddr = f->saddr, .sport = f->dport, .dport = f->sport, .proto = f->proto};
	struct ct4_entry *e = bpf_map_lookup_elem(&ct4, &k);
	if (!e)
		return 0;
	struct lb4_revnat *r = bpf_map_lookup_elem(&lb4_revnat, &e->rev_nat);
	if (!r)
		return 0;
	int host = e->flags & CT_HOST;
	__be32 client = e->client;
	__be16 client_port = e->client_port;
	/* into a pod: everything; out of eth0: a pod's reply to an outside client, once
	 * the node's netfilter has seen it; in on eth0: an SNATed connection's reply
	 * (the caller forwards it itself) or the node's own; into the node: its own */
	int src = where == REV_POD || (where == REV_EGRESS && !host && !client) || (where == REV_INGRESS && (host || client)) || (where == REV_HOST && (host || client));
	int dst = src && client && where != REV_EGRESS;
	if (!src)
		return 0;
	e->last_seen = bpf_ktime_get_ns();
	if (src && rewrite(skb, f, 0, f->saddr, r->address, f->sport, r->port) < 0)
		return -1;
	if (dst && rewrite(skb, f, 1, f->daddr, client, f->dport, client_port) < 0)
		return -1;
	f->saddr = r->address;
	f->sport = r->port;
	if (dst) {
		f->daddr = client;
		f->dport = client_port;
	}
	return dst ? 2 : 1;
}

/* A source port for an SNAT to the node's address that no other client's
 * connection to the same backend holds: the client's own when free. */
static __always_inline int nat_port(struct flow *f, __be32 node_ip, __be32 backend, __be16 bport, __be16 *out)
{
	__u16 port = bpf_ntohs(f->sport);
	for (int i = 0; i < 8; i++) {
		struct ct4_key k = {.saddr = node_ip, .daddr = backend, .sport = bpf_htons(port), .dport = bport, .proto = f->proto};
		struct ct4_entry *e = bpf_map_lookup_elem(&ct4, &k);
		if (!e || (e->client == f->saddr && e->client_port == f->sport)) {
			*out = bpf_htons(port);
			return 0;
		}
		port = 32768 + (port * 7919 + i) % 28232;
	}
	return -1;
}

#define DONE_REDIRECT 1 /* translate() bounced the packet (hairpin): return its verdict */

/* A frontend of `scope` for this packet: DNAT (and the SNAT a hairpin or an
 * externalTrafficPolicy Cluster service with a remote backend needs), with the
 * conntrack entries that keep the backend and let replies find their way back.
 * Returns -1 (no frontend), or a tc verdict in *verdict and 0 / DONE_REDIRECT. */
static __always_inline int translate(struct __sk_buff *skb, struct flow *f, __u8 scope, int from_pod, int from_host, int *verdict)
{
	struct lb4_key key = {.address = f->daddr, .dport = f->dport, .proto = f->proto, .scope = scope};
	struct lb4_service *svc = bpf_map_lookup_elem(&lb4_services, &key);
	if (!svc)
		return -1;
	if (svc->flags & SVC_FIREWALL) { /* a LoadBalancer IP with source ranges: others are dropped */
		struct src_range_key rk = {.prefixlen = 64, .rev_nat = svc->rev_nat, .addr = f->saddr};
		if (!bpf_map_lookup_elem(&lb4_src_range, &rk)) {
			*verdict = TC_ACT_SHOT;
			return DONE_REDIRECT;
		}
	}
	if (svc->count == 0) {
		*verdict = svc->flags & SVC_DROP ? TC_ACT_SHOT : reject(skb, f);
		return DONE_REDIRECT;
	}
	struct ct4_key sk = {.saddr = f->saddr, .daddr = f->daddr, .sport = f->sport, .dport = f->dport, .proto = f->proto, .flags = CT_SERVICE};
	struct ct4_entry *known = bpf_map_lookup_elem(&ct4, &sk);
	struct lb4_backend *b = 0;
	__u32 id = 0;
	__u64 now = bpf_ktime_get_ns();
	__be32 backend, src = f->saddr;
	__be16 bport, sport = f->sport;
	int hairpin = 0;
	if (known && known->rev_nat == svc->rev_nat && known->generation == svc->generation) {
		/* every packet after the first: what the first one was given, no map written */
		id = known->backend_id;
		b = bpf_map_lookup_elem(&lb4_backends, &id);
	}
	if (b) {
		known->last_seen = now;
		backend = b->address;
		bport = b->port;
		src = known->nat_addr;
		sport = known->nat_port;
		hairpin = from_pod && backend == f->saddr;
	} else {
		if (known && known->rev_nat == svc->rev_nat && in_service(&key, svc, known->backend_id)) {
			id = known->backend_id; /* the service changed, not this connection's backend */
			b = bpf_map_lookup_elem(&lb4_backends, &id);
		}
		if (!b) /* new, or its backend is gone: choose again */
			b = pick(&key, svc, f, &id);
		if (!b) {
			*verdict = TC_ACT_SHOT;
			return DONE_REDIRECT;
		}
		backend = b->address;
		bport = b->port;
		hairpin = from_pod && backend == f->saddr;
		int snat = !hairpin && (svc->flags & SVC_SNAT); /* as kube-proxy's masquerade: a local backend too */
		if (hairpin) {
			src = bpf_htonl(LOOPBACK);
		} else if (snat) {
			__u32 zero = 0;
			struct config *c = bpf_map_lookup_elem(&lb4_config, &zero);
			if (!c || !c->node_ip || nat_port(f, c->node_ip, backend, bport, &sport) < 0) {
				*verdict = TC_ACT_SHOT;
				return DONE_REDIRECT;
			}
			src = c->node_ip;
		}
		struct ct4_entry se = {.last_seen = now, .backend_id = id, .rev_nat = svc->rev_nat, .nat_port = sport, .nat_addr = src, .generation = svc->generation};
		struct ct4_key fk = {.saddr = src, .daddr = backend, .sport = sport, .dport = bport, .proto = f->proto};
		struct ct4_entry fe = {.last_seen = now, .backend_id = id, .rev_nat = svc->rev_nat, .flags = from_host ? CT_HOST : 0};
		if (src != f->saddr) {
			fe.client = f->saddr;
			fe.client_port = f->sport;
		}
		if (bpf_map_update_elem(&ct4, &sk, &se, BPF_ANY) < 0 || bpf_map_update_elem(&ct4, &fk, &fe, BPF_ANY) < 0) {
			*verdict = TC_ACT_SHOT;
			return DONE_REDIRECT;
		}
	}
	if (rewrite(skb, f, 1, f->daddr, backend, f->dport, bport) < 0 || rewrite(skb, f, 0, f->saddr, src, f->sport, sport) < 0) {
		*verdict = TC_ACT_SHOT;
		return DONE_REDIRECT;
	}
	f->daddr = backend;
	f->dport = bport;
	f->saddr = src;
	f->sport = sport;
	if (hairpin) {
		*verdict = bounce(skb); /* straight back into the pod */
		return DONE_REDIRECT;
	}
	*verdict = TC_ACT_OK;
	return 0;
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	struct flow f = {};
	if (parse(skb, &f) < 0)
		return TC_ACT_OK;
	if (f.daddr == bpf_htonl(LOOPBACK)) { /* a hairpin reply: back into the same pod */
		int r = reverse(skb, &f, REV_POD);
		if (r < 0)
			return TC_ACT_SHOT;
		return r ? bounce(skb) : TC_ACT_OK;
	}
	int verdict = TC_ACT_OK;
	translate(skb, &f, SCOPE_INTERNAL, 1, 0, &verdict);
	return verdict; /* the node routes it on: cni0, flannel.1, a host-gw or BGP route */
}

/* An ICMP error about a translated connection (a policy's admin-prohibited, a
 * port unreachable) quotes the packet as the backend got it: put the frontend
 * back in the quoted header, as conntrack does for RELATED packets, so that the
 * client matches the error to its connection. */
static __always_inline int reverse_icmp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_ICMP || ip->ihl != 5)
		return 0;
	__u32 icmp = ETH_HLEN + 20;
	__u8 type;
	if (bpf_skb_load_bytes(skb, icmp, &type, 1) < 0 || (type != 3 && type != 11))
		return 0;
	__u32 inner = icmp + 8;
	struct iphdr in;
	if (bpf_skb_load_bytes(skb, inner, &in, sizeof(in)) < 0 || in.ihl != 5 || (in.protocol != IPPROTO_TCP && in.protocol != IPPROTO_UDP))
		return 0;
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, inner + 20, ports, 4) < 0)
		return 0;
	struct ct4_key k = {.saddr = in.saddr, .daddr = in.daddr, .sport = ports[0], .dport = ports[1], .proto = in.protocol};
	struct ct4_entry *e = bpf_map_lookup_elem(&ct4, &k);
	if (!e || (e->flags & CT_HOST))
		return 0;
	struct lb4_revnat *r = bpf_map_lookup_elem(&lb4_revnat, &e->rev_nat);
	if (!r)
		return 0;
	__be32 vip = r->address;
	__be16 vport = r->port;
	__u32 csum = icmp + 2;
	__be16 old_check = in.check;
	/* the quoted IP header: its destination and checksum; the ICMP checksum follows both */
	if (bpf_l3_csum_replace(skb, inner + 10, in.daddr, vip, 4) < 0)
		return -1;
	__be16 new_check;
	if (bpf_skb_load_bytes(skb, inner + 10, &new_check, 2) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, csum, in.daddr, vip, 4) < 0 || bpf_l4_csum_replace(skb, csum, old_check, new_check, 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, inner + 16, &vip, 4, 0) < 0)
		return -1;
	/* the quoted destination port (the quoted L4 checksum is not whole: left as it is) */
	if (bpf_l4_csum_replace(skb, csum, ports[1], vport, 2) < 0 || bpf_skb_store_bytes(skb, inner + 22, &vport, 2, 0) < 0)
		return -1;
	return 1;
}

SEC("tc/egress")
int to_container(struct __sk_buff *skb)
{
	struct flow f = {};
	if (parse(skb, &f) < 0)
		return reverse_icmp(skb) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	return reverse(skb, &f, REV_POD) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Out of the device the FIB names for the packet's (new) destination: a packet
 * whose addresses were translated after the kernel routed it, or one that must
 * not be routed as input (its new source is the node's own address). */
static __always_inline int route_to(struct __sk_buff *skb, struct flow *f, __u32 flags)
{
	struct bpf_fib_lookup fib = {.family = 2 /* AF_INET */, .ipv4_src = f->saddr, .ipv4_dst = f->daddr, .l4_protocol = f->proto, .ifindex = skb->ifindex};
	int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), flags);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_SHOT;
	return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
}

SEC("tc/netdev")
int from_netdev(struct __sk_buff *skb)
{
	struct flow f = {};
	if (parse(skb, &f) < 0)
		return TC_ACT_OK;
	int r = reverse(skb, &f, REV_INGRESS);
	if (r == 2) /* an SNATed connection's reply, its addresses back to frontend and client: */
		return route_to(skb, &f, 0); /* forwarded as it came, past the node's stack */
	if (r)
		return r < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	__be32 client = f.saddr;
	int verdict = TC_ACT_OK;
	if (translate(skb, &f, SCOPE_EXTERNAL, 0, 0, &verdict) != 0)
		return verdict;
	/* SNATed to the node's own address: forwarded by the program, not the stack
	 * (which drops a packet coming in with a local source) */
	return f.saddr != client ? route_to(skb, &f, 0) : verdict;
}

SEC("tc/host")
int from_host(struct __sk_buff *skb)
{
	struct flow f = {};
	if (parse(skb, &f) < 0)
		return TC_ACT_OK;
	int r = reverse(skb, &f, REV_EGRESS); /* a backend's reply leaving toward an outside client */
	if (r)
		return r < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	int verdict = TC_ACT_OK;
	r = translate(skb, &f, SCOPE_INTERNAL, 0, 1, &verdict);
	if (r != 0)
		return r < 0 ? TC_ACT_OK : verdict;
	return route_to(skb, &f, 0); /* routed for the frontend: again for the backend */
}

SEC("tc/tohost")
int to_host(struct __sk_buff *skb)
{
	struct flow f = {};
	if (parse(skb, &f) < 0)
		return TC_ACT_OK;
	int r = reverse(skb, &f, REV_HOST);
	if (r == 2) /* a local backend's reply to an SNATed outside client: back out, past the stack */
		return route_to(skb, &f, 0);
	return r < 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";

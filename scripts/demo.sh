#!/usr/bin/env bash
# Bring up the demo lab, check its datapath with real probes, and show what to
# try next. Installs what is missing first (scripts/setup.sh).
#
#   sudo scripts/demo.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: labctl builds network namespaces and needs root: sudo $0" >&2
  exit 3
fi
"$repo/scripts/setup.sh" >/dev/null
cd "$repo"
labctl() { "$repo/.venv/bin/labctl" "$@"; }
export LABCTL_LAB=demo  # other labs may be up: every command below means this one
bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }

bold "\$ labctl up topologies/demo.yaml"
labctl up topologies/demo.yaml

bold "\$ labctl status"
labctl status

bold "Probes on the real datapath (each one must come back as expected):"
labctl probe toolbox default/web-0 --expect open        # same node: through cni0
labctl probe toolbox default/web-1 --expect open        # node1 -> node2 inside VXLAN (flannel.1)
labctl probe shop/frontend shop/db --port 5432 --expect open   # allowed by NetworkPolicy shop/db-ingress
labctl probe shop/frontend shop/db --proto udp --port 8125 --expect open
labctl probe toolbox default/web-2 --port 8081 --expect refused   # nothing listens: TCP RST
labctl probe toolbox ext/client --proto icmp --expect open  # leaving the cluster: masqueraded
labctl probe ext/client node/node2 --proto icmp --expect open

bold "Services, as kube-proxy programs them:"
echo "\$ 12 probes to svc/default/web (ClusterIP $(labctl status --json | "$repo/.venv/bin/python" -c 'import json,sys; print(next(s["clusterIP"] for s in json.load(sys.stdin)["services"] if s["name"] == "web"))')) from toolbox:"
for i in $(seq 12); do labctl probe toolbox svc/default/web --expect open; done | grep -o "served by [^,)]*" | sort | uniq -c
labctl probe ext/client svc/default/web-nodeport@nodeport --via node/node3 --expect open   # NodePort 30080 from outside
labctl probe ext/client svc/shop/db@lb --expect open                                       # LoadBalancer IP: the client's address is kept

bold "Cluster DNS (kube-system/kube-dns at 10.96.0.10), from inside a pod:"
echo "\$ labctl exec toolbox -- cat /etc/resolv.conf"
labctl exec toolbox -- cat /etc/resolv.conf
echo "\$ labctl exec toolbox -- getent hosts web"
labctl exec toolbox -- getent hosts web
echo "\$ labctl exec toolbox -- dig +short SRV _http._tcp.web.default.svc.cluster.local"
labctl exec toolbox -- dig +short SRV _http._tcp.web.default.svc.cluster.local
echo "\$ labctl exec toolbox -- curl -s http://web.default/"
labctl exec toolbox -- curl -s --max-time 3 http://web.default/

bold "NetworkPolicy, enforced in each node's kernel:"
labctl probe toolbox shop/db --port 5432 --expect blocked   # not the frontend: ICMP admin-prohibited
echo "\$ labctl verify      # every pod to every served port: Kubernetes semantics against probes"
labctl verify
echo "\$ labctl explain toolbox shop/db --port 5432"
labctl explain toolbox shop/db --port 5432

bold "L7 on real nginx: an Ingress with TLS from the lab's CA, and a Gateway API HTTPRoute:"
labctl probe ext/client ingress --http / --host web.demo.example --https --expect-status 200
labctl probe ext/client gw/default/demo --http /hello --host web.demo.example --expect-status 200
echo "\$ labctl explain ext/client gw/default/demo --http /hello --host web.demo.example"
labctl explain ext/client gw/default/demo --http /hello --host web.demo.example

bold "The kernel's own path of a packet (labctl trace), on three paths:"
echo "\$ labctl trace toolbox default/web-0          # same node: veth -> cni0 -> veth"
labctl trace toolbox default/web-0 --expect open
echo "\$ labctl trace toolbox default/web-1          # across nodes: VXLAN on flannel.1, outer header and VNI"
labctl trace toolbox default/web-1 --expect open
echo "\$ labctl trace toolbox svc/default/web        # through a Service: KUBE-SVC -> KUBE-SEP and the DNAT, undone on the way back"
labctl trace toolbox svc/default/web --expect open
echo "\$ labctl graph -o /tmp/demo.svg --verify      # the picture: nodes, pods, bridges, VXLAN, services, allowed and denied pairs"
labctl graph -o /tmp/demo.svg --verify && echo "wrote /tmp/demo.svg"

bold "The datapath, as a learner sees it:"
echo "\$ labctl exec node/node1 -- ip route"
labctl exec node/node1 -- ip route
echo "\$ labctl exec node/node1 -- bridge fdb show dev flannel.1"
labctl exec node/node1 -- bridge fdb show dev flannel.1

cat <<'NEXT'

The demo lab is up. Try next:

  sudo .venv/bin/labctl ui                                                    # http://127.0.0.1:8080/: picture, live status, verify matrix, a click traces a pair
  sudo .venv/bin/labctl explain toolbox shop/db --port 5432 --trace           # the semantics and the kernel's path side by side
  sudo .venv/bin/labctl exec toolbox -- curl -s http://web.default/          # by name: who answered, and whom it saw
  sudo .venv/bin/labctl exec shop/frontend -- dig db.shop.svc.cluster.local    # the cluster DNS, as on a cluster (try +search, -x, SRV)
  sudo .venv/bin/labctl exec node/node2 -- tcpdump -ni eth0 udp port 8472     # VXLAN on the wire (then curl again)
  sudo .venv/bin/labctl exec node/node1 -- iptables-save -t nat               # kube-proxy's KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-* and flannel's masquerade
  sudo .venv/bin/labctl ready web-1 false                                     # a failing readiness probe: web-1 leaves the endpoints
  sudo .venv/bin/labctl exec node/node3 -- iptables-save -t filter            # LABCTL-NETPOL chains, one NP-* chain per policy
  sudo .venv/bin/labctl exec node/node3 -- ipset list                         # the policy's selectors as sets of pod IPs
  sudo .venv/bin/labctl exec default/demo-nginx-0 -- cat /etc/nginx/nginx.conf # the Gateway's nginx.conf: a server per hostname, matches as maps
  sudo .venv/bin/labctl link node/node2 --rate 10mbit                         # a slow link (tc tbf on node2's eth0); --delay/--loss need netem
  sudo ip netns list                                                          # every node and pod is a namespace
  sudo .venv/bin/labctl down demo                                             # removes all of it
NEXT

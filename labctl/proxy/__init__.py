"""Services on the real datapath, the way kube-proxy programs them.

endpoints (pure) -> names (kube-proxy's chain names) -> iptables / nftables
(pure renderers: desired rules, and the transaction text that gets the kernel
there from what it has) -> sync (the kernel side: one transaction per node).
"""

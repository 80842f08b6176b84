"""NetworkPolicy: the engine (pure semantics), the enforcer's rules (pure
rendering to iptables and ipsets) and their sync into the nodes."""

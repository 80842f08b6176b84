"""Probes on the real datapath: target resolution (pure) and scapy probes."""

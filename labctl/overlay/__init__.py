"""Cross-node pod traffic: one module per kind (vxlan, host-gw), each an
Overlay (labctl.overlay.base), chosen by name through labctl.registry."""

"""labctl: Kubernetes-shaped networks on a real Linux kernel."""

__version__ = "0.1.0"

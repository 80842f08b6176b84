"""The topology model: parse, resolve defaults, validate. Pure; no kernel access."""

from labctl.model.load import build, load
from labctl.model.objects import Container, ContainerPort, Deployment, External, LabSpec, Node, Pod, Topology

__all__ = ["build", "load", "Container", "ContainerPort", "Deployment", "External", "LabSpec", "Node", "Pod", "Topology"]

"""What a system add-on is at run time: what the lab's responder serves for it,
and what `status` shows. Its objects (pods, services) come from its model part
(labctl.model.system), by the same name."""

from __future__ import annotations

from typing import Any, Callable

from labctl.model.objects import LabSpec, Pod, Topology


class AddOn:
    name = ""
    preload: tuple[str, ...] = ()  # modules the responder imports while the lab is built

    def enabled(self, spec: LabSpec) -> bool:
        from labctl.model.system import SYSTEM_ADDONS

        return any(a.name == self.name and a.enabled(spec) for a in SYSTEM_ADDONS)

    def require(self, spec: LabSpec) -> None:
        """What the host must have (exit 3), checked before anything is made."""

    def prepare(self, labdir, topo: Topology) -> None:
        """Work that needs no namespace (imports, files), run in a thread while the lab is built."""

    def sync(self, labdir, journal, topo: Topology) -> Callable[[], None] | None:
        """After every change, before new pods' commands start: the add-on's own state
        (configuration files, reloads). Returns what waits until that state is served."""
        return None

    def pod_config(self, topo: Topology, pod: Pod) -> dict[str, Any]:
        """Keys added to the responder's entry of a pod (one of the add-on's)."""
        return {}

    def responder_config(self, topo: Topology) -> dict[str, Any]:
        """Keys added to the responder's configuration."""
        return {}

    def status(self, topo: Topology) -> dict[str, Any] | None:
        """What `labctl status --json` shows under the add-on's name."""
        return None

    def summary(self, topo: Topology) -> str:
        """A few words for the line `up` and `validate` print."""
        return ""

"""The lab's system add-ons, served inside pods: the cluster DNS now; an ingress
controller next. One package or module each, an AddOn (labctl.addons.base),
chosen by name through labctl.registry (labctl.model.registry.ADDONS); the
objects each adds to a lab are its model part (labctl.model.system)."""

"""Pure planning: desired state against recorded state (labctl.plan.diff), and
the changes to bring a lab from one topology to another (labctl.plan.topology)."""

"""labctl exec TARGET -- CMD: run CMD in a pod's, node's or external's namespace."""

from __future__ import annotations

import os

import click

from labctl.cli import cli, require_root
from labctl.cli.common import lab_option, running_lab
from labctl.errors import InvalidInput
from labctl.model.targets import resolve


@cli.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@lab_option
@click.argument("target")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_(lab_name: str | None, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside TARGET (NS/POD, POD, node/NAME, ext/NAME).

    As `ip netns exec` does (it is what runs), the pod's files under
    /etc/netns/<netns>/ (its resolv.conf and hosts) replace those of /etc. In a
    pod, COMMAND also gets the service environment variables kubelet sets
    (WEB_SERVICE_HOST, WEB_SERVICE_PORT, ...). On a node of a bgp lab, birdc
    talks to that node's bird.

    \b
      labctl exec node/node1 -- ip route
      labctl exec node/node1 -- birdc show route
      labctl exec toolbox -- curl -s http://10.244.1.2:8080/
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidInput("no command given: labctl exec TARGET -- CMD [ARGS...]")
    require_root("exec")
    handle, topo = running_lab(lab_name)
    ep = resolve(topo, target, role="TARGET")
    if ep.netns is None:
        raise InvalidInput(f"TARGET {target!r}: exec runs in a pod, node/NAME or ext/NAME")
    command = _daemon_socket(topo, handle.dir.path, target, command)
    env = dict(os.environ)
    if ep.pod is not None:
        from labctl.model import dns

        env.update(dns.service_env(topo, ep.pod))
    os.execvpe("ip", ["ip", "netns", "exec", ep.netns, *command], env)


def _daemon_socket(topo, labdir, target: str, command: tuple[str, ...]) -> tuple[str, ...]:
    """`birdc ...` on a node of a bgp lab: that node's control socket (unless -s is given)."""
    from labctl import registry

    d = registry.overlay(topo.lab.overlay).daemon
    if d is None or not target.startswith("node/") or os.path.basename(command[0]) != d.client or "-s" in command:
        return command
    sock = labdir / d.name / target[5:] / f"{d.name}.ctl"
    return (command[0], "-s", str(sock), *command[1:])

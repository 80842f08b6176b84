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
    (WEB_SERVICE_HOST, WEB_SERVICE_PORT, ...).

    \b
      labctl exec node/node1 -- ip route
      labctl exec toolbox -- curl -s http://10.244.1.2:8080/
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidInput("no command given: labctl exec TARGET -- CMD [ARGS...]")
    require_root("exec")
    _, topo = running_lab(lab_name)
    ep = resolve(topo, target, role="TARGET")
    if ep.netns is None:
        raise InvalidInput(f"TARGET {target!r}: exec runs in a pod, node/NAME or ext/NAME")
    env = dict(os.environ)
    if ep.pod is not None:
        from labctl.model import dns

        env.update(dns.service_env(topo, ep.pod))
    os.execvpe("ip", ["ip", "netns", "exec", ep.netns, *command], env)

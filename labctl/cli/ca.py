"""labctl ca: the lab's certificate authority."""

from __future__ import annotations

from labctl import output
from labctl.cli import cli, require_root
from labctl.cli.common import json_option, lab_option, running_lab


@cli.command()
@lab_option
@json_option
def ca(lab_name, as_json) -> None:
    """Print the path of the lab's CA certificate (made the first time it is asked for).

    \b
    Certificates cert-manager's `cert-manager.io/cluster-issuer: labctl-ca` asks
    for are issued from it, and `labctl probe --https` verifies against it:
      labctl exec ext/client -- curl --cacert "$(labctl ca)" https://foo.example/
    """
    from labctl import pki

    require_root("ca")
    handle, topo = running_lab(lab_name)
    pair = pki.ca(handle.dir.path / "ca", topo.lab.name)
    info = pki.describe(pair.cert)
    if as_json:
        output.emit_json(info)
        return
    output.say(info["path"])
    output.say(f"subject {info['subject']}, sha256 {info['fingerprint']}")

"""scripts/demo.sh end to end, as a newcomer runs it."""

from __future__ import annotations

import subprocess

import pytest

from labctl.kernel import netns
from tests.helpers import REPO, run_labctl

pytestmark = pytest.mark.e2e


def test_demo_script_brings_up_and_verifies_the_demo(root):
    try:
        p = subprocess.run([str(REPO / "scripts/demo.sh")], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "lab demo is up" in p.stdout or "lab demo is up to date" in p.stdout
        assert p.stdout.count(": open") >= 6 and ": refused" in p.stdout
        assert "served by default/web-1" in p.stdout
        assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in p.stdout
        assert "svc/default/web-nodeport@nodeport (10.10.20.12:30080/tcp): open" in p.stdout
        assert "svc/shop/db@lb (10.10.20.200:5432/tcp): open (served by shop/db, client seen as 10.10.20.100" in p.stdout
        assert p.stdout.count("served by default/web-") >= 3  # the load-balancing tally
        assert "default/toolbox -> shop/db (10.244.2.3:5432/tcp): blocked" in p.stdout  # NetworkPolicy shop/db-ingress
        assert "nameserver 10.96.0.10" in p.stdout and "10.96.0.11      web.default.svc.cluster.local" in p.stdout
        assert "0 100 80 web.default.svc.cluster.local." in p.stdout and '"pod": "default/web-' in p.stdout
        assert ": 0 mismatches" in p.stdout and "isolated by shop/db-ingress" in p.stdout
        assert "Try next" in p.stdout
        # running it again is fine: up is idempotent
        again = subprocess.run([str(REPO / "scripts/demo.sh")], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "lab demo is up to date" in again.stdout
    finally:
        run_labctl("down", "demo")
    assert not [n for n in netns.listed() if n.startswith("demo-")]

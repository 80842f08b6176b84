"""Shared fixtures.

Kernel tests build real labs with unique names (lt + 5 hex digits) and tear
them down in the fixture; the session ends by checking that no namespace,
state directory or process of any test lab is left.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from labctl.kernel import netns
from labctl.state.store import labs
from tests.helpers import TEST_PREFIX, lab_processes, labctl_cmd, ours


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole session: no namespace, records or process of a lab this
    session made (another run on the same machine may have labs of its own)."""
    before = set(netns.listed())
    before_labs = set(labs())
    yield
    left_ns = [n for n in netns.listed() if n not in before and (ours(n) or n.startswith("demo-"))]
    left_labs = [lab for lab in labs() if lab.startswith(TEST_PREFIX) and lab not in before_labs]
    left_procs = [p for lab in left_labs for p in lab_processes(lab)]
    for lab in left_labs:  # clean up for the next run, then fail loudly
        subprocess.run(labctl_cmd() + ["down", lab], capture_output=True)
    assert not left_ns and not left_labs and not left_procs, f"left behind: namespaces {left_ns}, labs {left_labs}, pids {left_procs}"


@pytest.fixture(autouse=True)
def stock_kernel_features(request):
    """A test marked stock_kernel fails at once, naming the way to run it, on a kernel without
    IPVS (this CI host's kernel has neither IPVS nor netem; Debian's stock kernel has both)."""
    if request.node.get_closest_marker("stock_kernel") is None:
        return
    from labctl.errors import HostLacks
    from labctl.proxy import ipvs_kernel

    try:
        ipvs_kernel.require()
    except HostLacks as e:
        pytest.fail(f"{e.message}: this test needs a stock distribution kernel; run it with `sudo scripts/vm-test.sh`", pytrace=False)


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.fail("kernel tests build real namespaces and need root: sudo scripts/test.sh")

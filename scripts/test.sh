#!/usr/bin/env bash
# Install what is missing, then run the whole test suite: unit tests (pure),
# kernel tests (real namespaces and packets) and end-to-end runs of the CLI
# and scripts. Exits non-zero on any failure.
#
#   sudo scripts/test.sh                 # everything (then the stock-kernel VM tests and the
#                                        # provisioning path on a bare Debian 12)
#   sudo scripts/test.sh tests/unit      # any pytest arguments
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the kernel tests build network namespaces and need root: sudo $0 $*" >&2
  exit 3
fi
"$repo/scripts/setup.sh"
cd "$repo"
echo "==> ruff (lint and format check)"
.venv/bin/ruff check labctl tests benchmarks
.venv/bin/ruff format --check labctl tests benchmarks
if [ $# -eq 0 ]; then
  echo "==> pytest (this kernel)"
  .venv/bin/python -m pytest -m "not stock_kernel"
else
  echo "==> pytest $*"
  .venv/bin/python -m pytest "$@"
fi
left=$(ip netns list | awk '{print $1}' | grep -E '^(lt[0-9a-f]{5}|demo)-' || true)
if [ -n "$left" ]; then
  echo "test.sh: the suite left network namespaces behind:" >&2
  echo "$left" >&2
  exit 1
fi
files=$(ls /etc/netns 2>/dev/null | grep -E '^(lt[0-9a-f]{5}|demo)-' || true)
if [ -n "$files" ]; then
  echo "test.sh: the suite left pods' /etc/netns directories behind:" >&2
  echo "$files" >&2
  exit 1
fi
echo "==> no namespace (or /etc/netns file) left behind"
if [ $# -eq 0 ]; then
  # IPVS and netem need a stock distribution kernel: the tests that use them run in a VM
  echo "==> pytest -m stock_kernel (Debian's stock kernel in a VM)"
  scripts/vm-test.sh
  # the Vagrant VM's provisioning path, on a Debian 12 that has nothing installed
  echo "==> scripts/fresh-debian-test.sh (setup.sh --link, then up/probe/down, on a bare Debian 12)"
  scripts/fresh-debian-test.sh
fi

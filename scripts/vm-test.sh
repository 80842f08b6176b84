#!/usr/bin/env bash
# Run the tests that need a stock distribution kernel (IPVS, netem) inside a VM.
#
#   sudo scripts/vm-test.sh                       # the tests marked stock_kernel
#   sudo scripts/vm-test.sh tests/kernel -k ipvs  # any pytest arguments
#   sudo scripts/vm-test.sh --shell               # a root shell in the VM, the repo writable
#   sudo scripts/vm-test.sh --exec "CMD"          # run CMD in the repo inside the VM (benchmarks/bench_ipvs.py)
#
# Boots Debian's stock kernel (linux-image-amd64) under QEMU with virtme-ng,
# sharing this machine's root filesystem read-only (the repo writable, /etc
# and /tmp writable overlays that vanish with the VM), and runs pytest inside
# it. Installs what it needs first: qemu-system-x86, linux-image-amd64 and
# busybox-static from Debian, virtme-ng from PyPI into the project's .venv.
# Without KVM (as on the CI machines) QEMU emulates the CPU: about 20-30 s to
# boot, and Python runs several times slower than on the host.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
  echo "vm-test.sh: the tests build network namespaces inside the VM as root: sudo $0 $*" >&2
  exit 3
fi
"$repo/scripts/setup.sh" >/dev/null
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

packages=(qemu-system-x86 linux-image-amd64 busybox-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages for the VM: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ ! -x "$repo/.venv/bin/vng" ]; then
  say "installing virtme-ng into .venv"
  "$repo/.venv/bin/pip" install -q "virtme-ng>=1.42,<2"
fi

kernel=$(ls -1 /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$kernel" ]; then
  echo "vm-test.sh: no Debian stock kernel in /boot (apt-get install linux-image-amd64)" >&2
  exit 3
fi

shell=0
exec_cmd=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --shell) shell=1 ;;
    --exec) exec_cmd="${2:?--exec needs a command}"; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ ${#args[@]} -gt 0 ] || args=(-m stock_kernel)
inner="cd $(printf %q "$repo") && LABCTL_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 .venv/bin/python -m pytest -p no:cacheprovider $(printf '%q ' "${args[@]}")"
if [ -n "$exec_cmd" ]; then
  inner="cd $(printf %q "$repo") && PYTHONDONTWRITEBYTECODE=1 $exec_cmd"
fi

vng=(
  "$repo/.venv/bin/vng" --run "$kernel" --disable-kvm --cpus 2 --memory 2G
  --rwdir "$repo" --overlay-rwdir /etc --cwd "$repo"
)
export PATH="$repo/.venv/bin:$PATH"
if [ "$shell" = 1 ]; then
  say "booting $(basename "$kernel") (exit the shell to stop the VM)"
  exec "${vng[@]}"
fi
say "booting $(basename "$kernel") under QEMU (no KVM): ${exec_cmd:-pytest ${args[*]}}"
start=$(date +%s)
set +e
# through a pipe: QEMU reopens a file it is given as its console and truncates it (a CI log with it)
"${vng[@]}" --exec "$inner" </dev/null 2>&1 | cat
rc=${PIPESTATUS[0]}
set -e
echo "vm-test.sh: the VM run took $(( $(date +%s) - start )) s (boot included), exit $rc"
exit $rc

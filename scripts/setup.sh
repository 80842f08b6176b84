#!/usr/bin/env bash
# Install everything labctl needs, idempotently: Debian packages, then a .venv
# at the repo root with labctl installed (pip install -e .[test]).
#
#   sudo scripts/setup.sh          # what demo.sh, test.sh, CI and the Vagrant VM run
#   sudo scripts/setup.sh --link   # also put labctl on the PATH (/usr/local/bin/labctl)
#
# A second run changes nothing and takes well under a second.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
link=0
for arg in "$@"; do
  case "$arg" in
    --link) link=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# -- Debian packages -----------------------------------------------------------
packages=(
  iproute2 iptables nftables ipset conntrack tcpdump iputils-ping curl
  dnsutils iperf3 procps psmisc util-linux python3 python3-venv ipvsadm kmod nfacct
  nginx openssl bird2 graphviz chromium-headless-shell clang llvm bpftool libbpf-dev ethtool
)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    echo "run: sudo $0" >&2
    exit 3
  fi
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # No service a package brings may start in the host while it installs (Debian's
  # nginx would serve its default site on the host's port 80): policy-rc.d says no.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" || { [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# nginx runs only inside the L7 proxies' pods, bird only inside the nodes of a bgp lab:
# none of them in the host, none enabled (package:service).
for pair in nginx:nginx bird2:bird; do
  pkg=${pair%%:*} svc=${pair##*:}
  [ "$(id -u)" -eq 0 ] && dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || continue
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if systemctl is-enabled --quiet "$svc" 2>/dev/null || systemctl is-active --quiet "$svc" 2>/dev/null; then
      say "disabling the host's $svc service (labctl runs $svc inside its lab's namespaces)"
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  elif [ -x "/etc/init.d/$svc" ] && ls /etc/rc2.d/S??"$svc" >/dev/null 2>&1; then
    say "disabling the host's $svc service (labctl runs $svc inside its lab's namespaces)"
    "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done

# -- Python ------------------------------------------------------------------------
pick_python() {
  for py in "${LABCTL_PYTHON:-}" /usr/bin/python3 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  echo "setup.sh: labctl needs Python 3.11 or newer with venv (Debian: python3 python3-venv)" >&2
  exit 3
}

venv="$repo/.venv"
stamp="$venv/.labctl-installed"
want=$(cat "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  py=$(pick_python)
  say "creating $venv with $py"
  rm -rf "$venv"
  "$py" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$venv/bin/python" -c 'import labctl' 2>/dev/null; then
  say "installing labctl and its dependencies into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$repo[test]"
  # bytecode ahead of time: every labctl command starts faster, even where
  # PYTHONDONTWRITEBYTECODE keeps Python from caching it on first use
  "$venv/bin/python" -m compileall -q "$venv/lib" >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
"$venv/bin/python" -m compileall -q "$repo/labctl" >/dev/null 2>&1 || true

if [ "$link" -eq 1 ]; then
  ln -sf "$venv/bin/labctl" /usr/local/bin/labctl
  say "labctl is on the PATH: $(command -v labctl)"
fi
say "ready: $venv/bin/labctl"

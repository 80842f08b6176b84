#!/usr/bin/env bash
# The provisioning path on a machine that has nothing: a fresh Debian 12
# (debootstrap --variant=minbase, the packages a bare install has and no
# more), the repo as committed (git archive HEAD), then what the Vagrant VM
# runs: `scripts/setup.sh --link`; then a newcomer's first steps with `labctl`
# from the PATH: validate, up the demo, probe, status, down, nothing left.
# Runs in a chroot on this kernel (namespaces are the kernel's: the chroot
# gets its own /run, so its `ip netns` names are its own).
#
#   sudo scripts/fresh-debian-test.sh          # the Debian rootfs is cached in /var/cache/labctl-fresh
#   LABCTL_FRESH_KEEP=1 sudo scripts/fresh-debian-test.sh   # keep the chroot to look around
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-debian-test.sh: debootstrap and chroot need root: sudo $0" >&2
  exit 3
fi
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi
# the mirror this machine's apt already uses (deb822 sources, else the one-line format): never one of ours
mirror=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
if [ -z "$mirror" ]; then
  echo "fresh-debian-test.sh: no Debian mirror in this machine's apt configuration (/etc/apt/sources.list*)" >&2
  exit 3
fi

cache=/var/cache/labctl-fresh
base="$cache/bookworm-minbase.tar"
if [ ! -f "$base" ]; then
  say "debootstrap bookworm (minbase) from $mirror, once"
  tmp=$(mktemp -d /var/tmp/labctl-debootstrap.XXXXXX)
  debootstrap --variant=minbase bookworm "$tmp" "$mirror" >/dev/null
  mkdir -p "$cache"
  tar -C "$tmp" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$tmp"
fi

root=$(mktemp -d /var/tmp/labctl-fresh.XXXXXX)
mounted=()
cleanup() {
  set +e
  if [ -x "$root/usr/local/bin/labctl" ]; then chroot "$root" labctl down --all >/dev/null 2>&1; fi
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}"; done
  if [ -z "${LABCTL_FRESH_KEEP:-}" ]; then rm -rf "$root"; else echo "kept: $root"; fi
}
trap cleanup EXIT
mount --bind "$root" "$root"  # / a mount point in the chroot, as `ip netns exec` expects
mounted+=("$root")
tar -C "$root" -xf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# this machine's way out, not labctl's needs: a CA its egress proxy signs with
# (installed with the ca-certificates package) and pip told to trust it
mkdir -p "$root/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
mkdir -p "$root/home/vagrant/labctl"
git -C "$repo" archive HEAD | tar -C "$root/home/vagrant/labctl" -xf -
for m in proc sys dev run tmp; do
  case $m in
    proc) mount -t proc proc "$root/proc" ;;
    sys) mount --rbind /sys "$root/sys" ;;
    dev) mount --rbind /dev "$root/dev" ;;
    run|tmp) mount -t tmpfs "$m" "$root/$m" ;;
  esac
  mounted+=("$root/$m")
done

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb "$@"; }
say "fresh Debian 12: $(in_root sh -c 'dpkg-query -W | wc -l') packages, no python3-venv, no iproute2: $(in_root sh -c 'command -v ip || echo none')"
say "what the Vagrant VM runs: scripts/setup.sh --link"
t0=$(date +%s)
in_root bash -c 'cd /home/vagrant/labctl && scripts/setup.sh --link'
say "setup took $(( $(date +%s) - t0 )) s"
say "a newcomer's first steps, labctl from the PATH"
in_root bash -ec '
  cd /home/vagrant/labctl
  command -v labctl
  labctl validate topologies/demo.yaml
  labctl up topologies/demo.yaml
  labctl status
  labctl probe toolbox default/web-1 --expect open
  labctl probe toolbox svc/default/web --expect open
  labctl probe shop/frontend shop/db --port 5432 --expect open
  labctl exec node/node1 -- iptables-save -t nat | grep -c KUBE-SVC-
  labctl down --all
  test -z "$(ip netns list)"
'
say "fresh machine: setup, up, probe and down all worked; nothing left"

#!/usr/bin/env bash
# Install everything dhtfs needs on a Debian machine (run as root): system packages, a venv in
# .venv with the package (editable) and, with --test, the test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pkgs=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv rsync sqlite3 attr git)
# e2fsprogs and mount: the full-disk tests make small loop-mounted ext4 filesystems; curl:
# the HTTP gateway tests
[ "$want_test" = 1 ] && pkgs+=(bindfs e2fsprogs mount curl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The tests verify our units with systemd-analyze (package systemd; not its recommends: dbus,
# timesyncd). Installing it does not make systemd PID 1.
if [ "$want_test" = 1 ] && ! command -v systemd-analyze >/dev/null; then
  echo "setup: installing systemd (for systemd-analyze)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd >/dev/null; }
  then
    echo "setup: WARNING: could not install systemd; the unit-verification tests will skip" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
extra=""
[ "$want_test" = 1 ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
for tool in mount.dhtfs umount.dhtfs dhtfs; do
  ln -sf "$PWD/.venv/bin/$tool" "/usr/local/sbin/$tool" 2>/dev/null || true
done
# mount(8) runs /sbin/mount.<type>: this makes `mount -t dhtfs` and fstab lines work
# (mount.fuse.dhtfs for type fuse.dhtfs, which is how the kernel lists our mounts). umount(8)
# runs /sbin/umount.<type of the mount> = umount.fuse.dhtfs (for mounts it has a utab entry
# for, e.g. made with _netdev): a plain `umount DIR` then waits, as umount.dhtfs does, for the
# daemon to flush and exit.
for link in mount.dhtfs:mount.dhtfs mount.fuse.dhtfs:mount.dhtfs \
            umount.dhtfs:umount.dhtfs umount.fuse.dhtfs:umount.dhtfs; do
  name="${link%%:*}" tool="${link##*:}"
  if [ ! -e "/sbin/$name" ] || [ -L "/sbin/$name" ]; then
    ln -sfn "$PWD/.venv/bin/$tool" "/sbin/$name" 2>/dev/null || true
  fi
done
# systemd units (dhtfs@.service, mnt-swarm.mount/.automount) where systemd looks for locally
# installed ones; nothing is enabled. /etc/systemd/system overrides them.
if [ -d /lib/systemd/system ] || [ -d /usr/lib/systemd/system ]; then
  install -d /usr/local/lib/systemd/system
  install -m 0644 systemd/dhtfs@.service systemd/mnt-swarm.mount systemd/mnt-swarm.automount \
    /usr/local/lib/systemd/system/
  if [ -d /run/systemd/system ]; then systemctl daemon-reload 2>/dev/null || true; fi
fi
echo "setup: done (.venv ready; mount.dhtfs, umount.dhtfs, dhtfs linked into /usr/local/sbin)" >&2

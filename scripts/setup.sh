#!/usr/bin/env bash
# Install everything dhtfs needs on a Debian machine (run as root): system packages, a venv in
# .venv with the package (editable) and, with --test, the test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pkgs=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv rsync sqlite3 attr git)
[ "$want_test" = 1 ] && pkgs+=(bindfs)
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

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
extra=""
[ "$want_test" = 1 ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
for tool in mount.dhtfs umount.dhtfs dhtfs; do
  ln -sf "$PWD/.venv/bin/$tool" "/usr/local/sbin/$tool" 2>/dev/null || true
done
# mount(8) runs /sbin/mount.<type>: this makes `mount -t dhtfs` and fstab lines work.
for tool in mount.dhtfs umount.dhtfs; do
  if [ ! -e "/sbin/$tool" ] || [ -L "/sbin/$tool" ]; then
    ln -sf "$PWD/.venv/bin/$tool" "/sbin/$tool" 2>/dev/null || true
  fi
done
echo "setup: done (.venv ready; mount.dhtfs, umount.dhtfs, dhtfs linked into /usr/local/sbin)" >&2

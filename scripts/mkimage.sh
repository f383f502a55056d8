#!/usr/bin/env bash
# mkimage.sh OUTDIR - build OUTDIR/busybox.tar, a deterministic single-layer OCI
# image-layout archive made from Debian's static /bin/busybox (busybox-static).
# No registry or docker needed; load it with
#     ctr -a SOCK -n NS images import OUTDIR/busybox.tar
#
# Image names: ghcr.io/containerd/busybox:1.36 and docker.io/library/busybox:latest
# (plus $EXTRA_NAMES, space separated). Config: Cmd ["sh"], Env PATH.
# The rootfs mimics the official busybox image: one hard link per applet,
# /etc/passwd and /etc/group with the official users/groups, and shell stand-ins
# for pgrep and ipcs, which Debian's build lacks.
#
# The archive is rebuilt only when busybox, this script or the names changed
# (a stamp file records them). Same input -> byte-identical archive.
# env: BUSYBOX (default /bin/busybox), EXTRA_NAMES, ARCH (default from uname -m)
set -euo pipefail
umask 022
export LC_ALL=C

out=${1:?usage: mkimage.sh OUTDIR}
bb=${BUSYBOX:-/bin/busybox}
read -r -a extra <<< "${EXTRA_NAMES:-}"
names=(ghcr.io/containerd/busybox:1.36 docker.io/library/busybox:latest "${extra[@]}")
case "${ARCH:-$(uname -m)}" in
  x86_64|amd64) arch=amd64;; aarch64|arm64) arch=arm64;; *) arch=${ARCH:-$(uname -m)};;
esac

[ -x "$bb" ] || { echo "mkimage.sh: $bb not found (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$bb" >/dev/null 2>&1; then   # ldd succeeds only on dynamic executables
  echo "mkimage.sh: $bb is not static (apt-get install busybox-static)" >&2; exit 1
fi

# The rootfs and the archive format are the peer suites' images' too.
peer=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/peer
rootfs_sh=$peer/busybox-rootfs.sh
mkoci_sh=$peer/mkoci.sh
mkdir -p "$out"; out=$(cd "$out" && pwd)
archive=$out/busybox.tar
stamp=$out/.busybox.tar.stamp

# Serialize concurrent callers (e.g. several test packages running in parallel).
exec 9>"$out/.busybox.lock"
flock 9

want=$(printf '%s\n' "$(sha256sum < "$bb")" "$(sha256sum < "${BASH_SOURCE[0]}")" "$(sha256sum < "$rootfs_sh")" "$(sha256sum < "$mkoci_sh")" "$arch" "${names[@]}" | sha256sum | cut -d' ' -f1)
if [ -f "$archive" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$archive (up to date)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- rootfs ----------------------------------------------------------------------
rootfs=$work/rootfs
BUSYBOX=$bb bash "$rootfs_sh" "$rootfs"

# ---- OCI image layout -------------------------------------------------------------
ARCH=$arch bash "$mkoci_sh" "$work/busybox.tar" "$rootfs" \
  '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}' "${names[@]}" > "$work/mkoci.out"
# Publish atomically: readers never see a half-written archive.
mv "$work/busybox.tar" "$archive.tmp"
mv "$archive.tmp" "$archive"
echo "$want" > "$stamp"
echo "$archive manifest $(cut -d" " -f2 "$work/mkoci.out")"

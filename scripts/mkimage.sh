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

# The rootfs is the one the peer suites' images use too.
rootfs_sh=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/peer/busybox-rootfs.sh
mkdir -p "$out"; out=$(cd "$out" && pwd)
archive=$out/busybox.tar
stamp=$out/.busybox.tar.stamp

# Serialize concurrent callers (e.g. several test packages running in parallel).
exec 9>"$out/.busybox.lock"
flock 9

want=$(printf '%s\n' "$(sha256sum < "$bb")" "$(sha256sum < "${BASH_SOURCE[0]}")" "$(sha256sum < "$rootfs_sh")" "$arch" "${names[@]}" | sha256sum | cut -d' ' -f1)
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
blobs=$work/layout/blobs/sha256
mkdir -p "$blobs"
sha() { sha256sum "$1" | cut -d' ' -f1; }
# add_blob FILE: move FILE into blobs/ and print "<digest> <size>"
add_blob() { local d s; d=$(sha "$1"); s=$(stat -c %s "$1"); mv "$1" "$blobs/$d"; echo "$d $s"; }
# det_tar DIR OUT FILE...: deterministic tar (given order, mtime 0, root owner)
det_tar() { local dir=$1 outf=$2; shift 2
  tar -C "$dir" --format=gnu --numeric-owner --owner=0 --group=0 --mtime=@0 --no-recursion -cf "$outf" "$@"; }

# Layer: sorted entries without a "./" prefix; hard links become link entries
# pointing at the first path in sort order.
( cd "$rootfs" && find . -mindepth 1 | sed 's|^\./||' | sort ) > "$work/files"
tar -C "$rootfs" --format=gnu --numeric-owner --owner=0 --group=0 --mtime=@0 \
    --no-recursion -T "$work/files" -cf "$work/layer.tar"
diffid=$(sha "$work/layer.tar")
gzip -n -9 "$work/layer.tar"
read -r ldig lsize < <(add_blob "$work/layer.tar.gz")

printf '{"created":"1970-01-01T00:00:00Z","architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/mkimage.sh"}]}' \
  "$arch" "$diffid" > "$work/config"
read -r cdig csize < <(add_blob "$work/config")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$cdig" "$csize" "$ldig" "$lsize" > "$work/manifest"
read -r mdig msize < <(add_blob "$work/manifest")

# index.json: one entry per name, all pointing at the same manifest. containerd
# uses io.containerd.image.name verbatim as the image name.
entries=
for name in "${names[@]}"; do
  tag=${name##*:}
  case "$tag" in */*) tag=latest;; esac
  e=$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}' \
      "$mdig" "$msize" "$arch" "$name" "$tag")
  entries=${entries:+$entries,}$e
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$entries" > "$work/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"

blobfiles=("$blobs"/*)   # glob order is sorted (LC_ALL=C)
det_tar "$work/layout" "$work/busybox.tar" oci-layout index.json blobs blobs/sha256 \
  "${blobfiles[@]#"$work/layout/"}"
# Publish atomically: readers never see a half-written archive.
mv "$work/busybox.tar" "$archive.tmp"
mv "$archive.tmp" "$archive"
echo "$want" > "$stamp"
echo "$archive manifest sha256:$mdig"

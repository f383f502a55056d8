#!/usr/bin/env bash
# mkoci.sh OUT.tar ROOTFS_DIR CONFIG_JSON NAME... - build a single-layer OCI
# image-layout archive from a rootfs directory with tar, gzip, sha256sum and
# printf (no registry, no docker, no jq). `ctr images import`, `nerdctl load`
# and push-oci.sh read it.
#
#   CONFIG_JSON  the inner "config" object of the image config, e.g.
#                '{"Env":["PATH=/usr/bin:/bin"],"Cmd":["sh"]}'
#   NAME         full references (ghcr.io/containerd/busybox:1.36); each becomes
#                one index.json entry pointing at the same manifest, annotated
#                io.containerd.image.name=NAME (containerd uses it verbatim) and
#                org.opencontainers.image.ref.name=<tag>.
# Deterministic: sorted entries, mtime 0, owner 0:0, gzip -n. Same input, same
# digests (critest compares image ids across pulls).
# env: ARCH (default from uname -m)
set -euo pipefail
export LC_ALL=C
out=${1:?usage}; rootfs=${2:?usage}; cfg=${3:?usage}; shift 3
[ $# -ge 1 ] || { echo "mkoci.sh: need at least one NAME" >&2; exit 2; }
case "${ARCH:-$(uname -m)}" in
  x86_64|amd64) arch=amd64;; aarch64|arm64) arch=arm64;; *) arch=${ARCH:-$(uname -m)};;
esac

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
blobs=$work/layout/blobs/sha256; mkdir -p "$blobs"
sha() { sha256sum "$1" | cut -d' ' -f1; }
# add_blob FILE: move FILE into blobs/ under its digest; print "<digest> <size>"
add_blob() { local d s; d=$(sha "$1"); s=$(stat -c %s "$1"); mv "$1" "$blobs/$d"; echo "$d $s"; }

# 1. layer; hard links (busybox applets) become tar link entries
( cd "$rootfs" && find . -mindepth 1 | sed 's|^\./||' | sort ) > "$work/files"
tar -C "$rootfs" --format=gnu --numeric-owner --owner=0 --group=0 --mtime=@0 \
    --no-recursion -T "$work/files" -cf "$work/layer.tar"
diffid=$(sha "$work/layer.tar")
gzip -n -9 "$work/layer.tar"
read -r ldig lsize < <(add_blob "$work/layer.tar.gz")

# 2. image config, 3. manifest
printf '{"created":"1970-01-01T00:00:00Z","architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/peer/mkoci.sh"}]}' \
  "$arch" "$cfg" "$diffid" > "$work/config"
read -r cdig csize < <(add_blob "$work/config")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$cdig" "$csize" "$ldig" "$lsize" > "$work/manifest"
read -r mdig msize < <(add_blob "$work/manifest")

# 4. index.json + oci-layout
entries=
for name in "$@"; do
  tag=${name##*:}
  case "$tag" in */*) tag=latest;; esac   # no tag (host:port/repo)
  e=$(printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}' \
      "$mdig" "$msize" "$arch" "$name" "$tag")
  entries=${entries:+$entries,}$e
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$entries" > "$work/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"

# 5. the archive, published atomically
blobfiles=("$blobs"/*)
tar -C "$work/layout" --format=gnu --numeric-owner --owner=0 --group=0 --mtime=@0 --no-recursion \
    -cf "$work/out.tar" oci-layout index.json blobs blobs/sha256 "${blobfiles[@]#"$work/layout/"}"
mv "$work/out.tar" "$out"
echo "$out sha256:$mdig"

#!/usr/bin/env bash
# push-oci.sh REGISTRY ARCHIVE - push every image named in an OCI image-layout
# archive (as made by mkoci.sh) to REGISTRY (e.g. localhost:5000) over plain
# HTTP, with nothing but curl (registry API v2: blob upload, manifest PUT).
#
# Names are mapped the way a containerd registry mirror (hosts.toml) asks for
# them: the registry host is dropped, the path kept:
#   ghcr.io/containerd/busybox:1.36               -> REGISTRY/containerd/busybox:1.36
#   registry.k8s.io/e2e-test-images/nginx:1.14-2  -> REGISTRY/e2e-test-images/nginx:1.14-2
#   docker.io/library/busybox:latest              -> REGISTRY/library/busybox:latest
# Prints "REGISTRY/path:tag sha256:<manifest digest>" per name.
set -euo pipefail
reg=${1:?usage: push-oci.sh REGISTRY ARCHIVE}; archive=${2:?usage: push-oci.sh REGISTRY ARCHIVE}
base=http://$reg/v2
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
tar -C "$work" -xf "$archive"
blobs=$work/blobs/sha256
index=$(cat "$work/index.json")

# index.json from mkoci.sh: one entry per name, each with a manifest digest and
# an io.containerd.image.name annotation. Split the entries on '},{"mediaType'.
entries=$(sed 's/},{"mediaType"/}\n{"mediaType"/g' <<< "$index")
while IFS= read -r e; do
  mdig=$(grep -o '"digest":"sha256:[0-9a-f]*"' <<< "$e" | head -1 | cut -d'"' -f4)
  name=$(grep -o '"io.containerd.image.name":"[^"]*"' <<< "$e" | cut -d'"' -f4)
  [ -n "$mdig" ] && [ -n "$name" ] || { echo "cannot parse index entry: $e" >&2; exit 1; }
  path=${name#*/}; repo=${path%:*}; tag=${path##*:}
  manifest=$blobs/${mdig#sha256:}
  # blobs the manifest references: config + layers
  for d in $(grep -o '"digest":"sha256:[0-9a-f]*"' "$manifest" | cut -d'"' -f4); do
    if curl -fsS -o /dev/null -I "$base/$repo/blobs/$d" 2>/dev/null; then continue; fi
    # monolithic upload: POST for an upload URL, PUT the bytes with ?digest=
    loc=$(curl -fsS -X POST -D - -o /dev/null "$base/$repo/blobs/uploads/" |
          tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
    [ -n "$loc" ] || { echo "no upload location for $repo" >&2; exit 1; }
    case "$loc" in http*) ;; *) loc=http://$reg$loc;; esac
    case "$loc" in *\?*) sep='&';; *) sep='?';; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' \
      --data-binary "@$blobs/${d#sha256:}" "$loc${sep}digest=$d" -o /dev/null
  done
  mt=$(grep -o '"mediaType":"[^"]*"' "$manifest" | head -1 | cut -d'"' -f4)
  curl -fsS -X PUT -H "Content-Type: $mt" --data-binary "@$manifest" \
    "$base/$repo/manifests/$tag" -o /dev/null
  echo "$reg/$repo:$tag $mdig"
done <<< "$entries"

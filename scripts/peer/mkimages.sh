#!/usr/bin/env bash
# mkimages.sh OUTDIR - build the offline images the peer suites use, as OCI
# archives (mkoci.sh), from Debian's busybox-static and two small static Go
# programs (go/cmd/pause, go/cmd/nginx-lite):
#
#   busybox.tar        ghcr.io/containerd/busybox:1.36 (:1.28), docker.io/library/busybox
#                      (:latest, :1.36), registry.k8s.io/e2e-test-images/busybox:1.29-2 (-4)
#   pause.tar          registry.k8s.io/pause:3.6 ... 3.10.2  (/pause, user 65535)
#   nginx.tar          registry.k8s.io/e2e-test-images/nginx:1.14-2, ghcr.io/containerd/nginx:1.27.0,
#                      docker.io/library/nginx:latest  (busybox + /usr/sbin/nginx = nginx-lite on :80)
#   hostnet-nginx.tar  gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest (same, :12003)
#   httpd.tar          registry.k8s.io/e2e-test-images/httpd:2.4.39-4 (busybox httpd on :80)
#   critest-*.tar      gcr.io/k8s-staging-cri-tools/test-image-*: only critest's pull
#                      tests use them (served by the local registry)
set -euo pipefail
export LC_ALL=C
umask 022
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: mkimages.sh OUTDIR}
mkdir -p "$out"; out=$(cd "$out" && pwd)
bb=${BUSYBOX:-/bin/busybox}
[ -x "$bb" ] || { echo "mkimages.sh: $bb missing (apt-get install busybox-static)" >&2; exit 1; }
if ldd "$bb" >/dev/null 2>&1; then echo "mkimages.sh: $bb is not static (busybox-static)" >&2; exit 1; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
PATHENV='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
mk() { "$here/mkoci.sh" "$@" >/dev/null; echo "  $(basename "$1")"; }

# ---- busybox rootfs like the official image ----------------------------------------
r=$tmp/bb
BUSYBOX=$bb bash "$here/busybox-rootfs.sh" "$r"
echo '<html><body>It works! (busybox httpd)</body></html>' > "$r/var/www/index.html"

# ---- static Go helpers --------------------------------------------------------------
(cd "$here/go" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$tmp/gobin/" ./cmd/...)

echo "images in $out:"
mk "$out/busybox.tar" "$r" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"]}" \
  ghcr.io/containerd/busybox:1.36 ghcr.io/containerd/busybox:1.28 \
  docker.io/library/busybox:latest docker.io/library/busybox:1.36 \
  registry.k8s.io/e2e-test-images/busybox:1.29-2 registry.k8s.io/e2e-test-images/busybox:1.29-4

mkdir -p "$tmp/pause"; install -m 755 "$tmp/gobin/pause" "$tmp/pause/pause"
mk "$out/pause.tar" "$tmp/pause" "{\"Env\":[$PATHENV],\"Entrypoint\":[\"/pause\"],\"User\":\"65535:65535\"}" \
  registry.k8s.io/pause:3.6 registry.k8s.io/pause:3.8 registry.k8s.io/pause:3.9 \
  registry.k8s.io/pause:3.10 registry.k8s.io/pause:3.10.1 registry.k8s.io/pause:3.10.2

cp -a "$r" "$tmp/nginx"; install -m 755 "$tmp/gobin/nginx-lite" "$tmp/nginx/usr/sbin/nginx"
mkdir -p "$tmp/nginx/var/run"
mk "$out/nginx.tar" "$tmp/nginx" \
  "{\"Env\":[$PATHENV],\"Entrypoint\":[\"/usr/sbin/nginx\"],\"ExposedPorts\":{\"80/tcp\":{}},\"StopSignal\":\"SIGQUIT\"}" \
  registry.k8s.io/e2e-test-images/nginx:1.14-2 ghcr.io/containerd/nginx:1.27.0 docker.io/library/nginx:latest
mk "$out/hostnet-nginx.tar" "$tmp/nginx" \
  "{\"Env\":[$PATHENV,\"PORT=12003\"],\"Entrypoint\":[\"/usr/sbin/nginx\"],\"ExposedPorts\":{\"12003/tcp\":{}},\"StopSignal\":\"SIGQUIT\"}" \
  gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest
mk "$out/httpd.tar" "$r" \
  "{\"Env\":[$PATHENV],\"Entrypoint\":[\"/bin/sh\",\"-c\",\"echo httpd: busybox httpd listening on :80; exec httpd -f -v -p 80 -h /var/www\"],\"ExposedPorts\":{\"80/tcp\":{}}}" \
  registry.k8s.io/e2e-test-images/httpd:2.4.39-4

# critest "Image Manager" and image-user tests always pull these.
R=gcr.io/k8s-staging-cri-tools
BBCFG="{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"]}"
for t in test-image-1 test-image-2 test-image-3; do   # three distinct digests
  cp -a "$r" "$tmp/$t"; echo "$t" > "$tmp/$t/$t"
  mk "$out/critest-$t.tar" "$tmp/$t" "$BBCFG" "$R/$t:latest"
done
cp -a "$r" "$tmp/ti"; echo test-image > "$tmp/ti/test-image"
mk "$out/critest-test-image.tar" "$tmp/ti" "$BBCFG" "$R/test-image-latest:latest" \
  "$R/test-image-tag:test" "$R/test-image-tag:all" "$R/test-image-tags:1" "$R/test-image-tags:2" "$R/test-image-tags:3"
mk "$out/critest-user-uid.tar" "$r" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"1002\"}" "$R/test-image-user-uid:latest"
mk "$out/critest-user-username.tar" "$r" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"www-data\"}" "$R/test-image-user-username:latest"
mk "$out/critest-user-uid-group.tar" "$r" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"1003:1004\"}" "$R/test-image-user-uid-group:latest"
mk "$out/critest-user-username-group.tar" "$r" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"www-data:1004\"}" "$R/test-image-user-username-group:latest"
# uid 1000 is a member of gid 50000 inside the image (SupplementalGroupsPolicy)
cp -a "$r" "$tmp/pg"
echo 'default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh' >> "$tmp/pg/etc/passwd"
printf 'default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n' >> "$tmp/pg/etc/group"
mkdir -p "$tmp/pg/home/default-user"
mk "$out/critest-predefined-group.tar" "$tmp/pg" "{\"Env\":[$PATHENV],\"Cmd\":[\"sh\"],\"User\":\"1000\"}" "$R/test-image-predefined-group:latest"

#!/usr/bin/env bash
# build-tools.sh - build what the peer suites need into .tools/peer/ (cached,
# idempotent; a second run only checks):
#
#   bin/crictl                  cri-tools v1.34.0 (go install)
#   bin/critest                 cri-tools v1.34.0; a *test* binary (cmd/critest has
#                               only cri_test.go), so `go test -c` in a scratch module
#   bin/containerd-client.test  containerd v2.4.2 integration/client, built from a
#                               scratch copy of the module with the image-list patch
#   images/*.tar                offline OCI archives (mkimages.sh)
#
# plus the Debian packages: docker-registry, containernetworking-plugins,
# busybox-static. Everything comes from the Go module proxy and Debian apt.
# env: CRI_TOOLS_VERSION (v1.34.0), CLIENT_TEST_VERSION (v2.4.2), FORCE=1 rebuilds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin=$PEER_TOOLS/bin; mkdir -p "$bin" "$PEER_TOOLS/images"
export GOFLAGS=-mod=mod   # scratch modules: let go resolve and record versions
export GOTOOLCHAIN=local
forced() { [ "${FORCE:-0}" = 1 ]; }
# stamp_ok FILE VALUE: FILE records VALUE (the inputs of a cached build)
stamp_ok() { ! forced && [ "$(cat "$1" 2>/dev/null)" = "$2" ]; }

# ---- Debian packages ------------------------------------------------------------
missing=()
for p in docker-registry containernetworking-plugins busybox-static curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" ||
    { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
# (policy-rc.d on these machines keeps the packaged registry service from
# starting; the suites start their own on 127.0.0.1 with data in a temp dir.)

# ---- crictl ---------------------------------------------------------------------------
# cri-tools fills in its version at link time; go install does not, so set it.
verflag="-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}"
if ! forced && "$bin/crictl" --version 2>/dev/null | grep -q "${CRI_TOOLS_VERSION#v}"; then
  log "crictl $CRI_TOOLS_VERSION (cached)"
else
  log "building crictl $CRI_TOOLS_VERSION"
  GOBIN=$bin go install -ldflags "$verflag" "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
fi

# ---- critest ------------------------------------------------------------------------
if ! forced && "$bin/critest" --version 2>/dev/null | grep -q "${CRI_TOOLS_VERSION#v}"; then
  log "critest $CRI_TOOLS_VERSION (cached)"
else
  log "building critest $CRI_TOOLS_VERSION (go test -c)"
  w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
  (cd "$w" && go mod init critestbuild >/dev/null 2>&1 &&
     go get -t "sigs.k8s.io/cri-tools/cmd/critest@$CRI_TOOLS_VERSION" &&
     go test -c -ldflags "$verflag" -o "$bin/critest" sigs.k8s.io/cri-tools/cmd/critest)
  rm -rf "$w"; trap - EXIT
fi

# ---- containerd integration/client ------------------------------------------------------
# The patch: integration/client sets `testImage = images.Get(images.BusyBox)` in a
# package-level var, which runs before TestMain's flag.Parse(), so the suite's
# own -image-list flag is read as "" and the ghcr.io defaults always win. Our
# copy of integration/images/image_list.go also reads $TEST_IMAGE_LIST, which
# is set before the process starts. (go test -overlay would be nicer, but Go
# refuses overlays of files in GOMODCACHE.)
patch='s|initImages(\*imageListFile)|f := *imageListFile; if f == "" { f = os.Getenv("TEST_IMAGE_LIST") }; initImages(f)|'
want="$CLIENT_TEST_VERSION $(sha256sum <<< "$patch" | cut -c1-16)"
if stamp_ok "$PEER_TOOLS/.client-test.stamp" "$want" && [ -x "$bin/containerd-client.test" ]; then
  log "containerd-client.test $CLIENT_TEST_VERSION (cached)"
else
  log "building containerd $CLIENT_TEST_VERSION integration/client (go test -c)"
  go mod download "github.com/containerd/containerd/v2@$CLIENT_TEST_VERSION"
  src=$(go env GOMODCACHE)/github.com/containerd/containerd/v2@$CLIENT_TEST_VERSION
  w=$(mktemp -d); trap 'chmod -R u+w "$w"; rm -rf "$w"' EXIT
  cp -r "$src" "$w/src"; chmod -R u+w "$w/src"   # module cache files are read-only
  f=$w/src/integration/images/image_list.go
  grep -q 'initImages(\*imageListFile)' "$f" || die "unexpected $f in $CLIENT_TEST_VERSION: patch does not apply"
  sed -i "$patch" "$f"
  grep -q TEST_IMAGE_LIST "$f" || die "patch did not apply"
  # no_btrfs: the btrfs snapshotter needs cgo headers we do not need
  (cd "$w/src" && go test -c -tags no_btrfs -o "$bin/containerd-client.test" ./integration/client)
  chmod -R u+w "$w"; rm -rf "$w"; trap - EXIT
  echo "$want" > "$PEER_TOOLS/.client-test.stamp"
fi

# ---- images -------------------------------------------------------------------------------
# Rebuilt when busybox, the image scripts or the Go helpers change.
want=$(cat /bin/busybox "$PEER/mkimages.sh" "$PEER/busybox-rootfs.sh" "$PEER/mkoci.sh" "$PEER"/go/go.mod "$PEER"/go/cmd/*/*.go | sha256sum | cut -d' ' -f1)
if stamp_ok "$PEER_TOOLS/.images.stamp" "$want" && [ -f "$PEER_TOOLS/images/busybox.tar" ]; then
  log "images (cached)"
else
  log "building images"
  rm -f "$PEER_TOOLS"/images/*.tar
  "$PEER/mkimages.sh" "$PEER_TOOLS/images" >&2
  echo "$want" > "$PEER_TOOLS/.images.stamp"
fi

echo "crictl:                 $("$bin/crictl" --version 2>/dev/null)"
echo "critest:                $("$bin/critest" --version 2>/dev/null | grep version)"
echo "containerd-client.test: $bin/containerd-client.test ($(cat "$PEER_TOOLS/.client-test.stamp"))"
echo "images:                 $(cd "$PEER_TOOLS/images" && ls *.tar | tr '\n' ' ')"

#!/usr/bin/env bash
# build.sh - the Kubernetes node binaries for `make e2e-k8s`, from the Go module proxy.
#
#   .tools/k8s/<version>/bin/{etcd,kube-apiserver,kubelet,kubectl[,crictl]}
#   .tools/k8s/images/{busybox.tar,pause.tar}   (offline OCI archives)
#   .tools/k8s/VERSION                          (the version node.sh uses)
#
# <version> is the newest Kubernetes 1.34 patch the module proxy serves (or
# $K8S_VERSION). Kubernetes cannot be `go install`ed (its go.mod replaces the
# k8s.io staging modules with ./staging paths), so each binary is built in a
# throw-away module that requires k8s.io/kubernetes and replaces every staging
# module with its v0.34.<patch> release. etcd is go.etcd.io/etcd/server/v3
# (newest 3.6, or $ETCD_VERSION). crictl: .tools/peer/bin/crictl is reused when
# another build put it there, else sigs.k8s.io/cri-tools $CRICTL_VERSION
# (v1.34.0) is built. Everything is skipped when already built (idempotent).
#
# Cold: about 10-20 minutes on 2 busy cores; warm: about a second.
# env: K8S_VERSION, K8S_MINOR (1.34), ETCD_VERSION, CRICTL_VERSION, TOOLS_DIR
set -euo pipefail
umask 022

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools=${TOOLS_DIR:-$root/.tools}
k8s_tools=$tools/k8s
minor=${K8S_MINOR:-1.34}
crictl_version=${CRICTL_VERSION:-v1.34.0}
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then PATH=/usr/local/go/bin:$PATH; fi

log() { printf '[build.sh %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

# versions MODULE: the versions the proxy lists, newest first (outside any module)
versions() { (cd / && go list -m -versions "$1" 2>/dev/null) | tr ' ' '\n' | tail -n +2 | sort -rV; }
available() { (cd / && go mod download -json "$1" >/dev/null 2>&1); }

# ---- which Kubernetes ---------------------------------------------------------------
# The proxy's version list of k8s.io/kubernetes can lag (it listed v1.34.4 while
# v1.34.12 was served), so the candidates are the union of its list and of the
# matching k8s.io/api releases (v0.34.N <-> v1.34.N); the newest one the proxy
# actually serves wins.
resolve_k8s() {
  local n cands v
  n=${minor#1.}
  cands=$( { versions k8s.io/kubernetes | grep -E "^v$minor\.[0-9]+$";
             versions k8s.io/api | grep -E "^v0\.$n\.[0-9]+$" | sed "s/^v0\.$n\./v$minor./"; } | sort -ruV)
  for v in $cands; do
    if available "k8s.io/kubernetes@$v"; then echo "$v"; return 0; fi
    log "k8s.io/kubernetes@$v: not served by the module proxy (a listed candidate), trying the previous patch"
  done
  return 1
}

if [ -n "${K8S_VERSION:-}" ]; then
  ver=$K8S_VERSION
elif ver=$(resolve_k8s); then
  :
elif [ -f "$k8s_tools/VERSION" ]; then   # offline: keep what was built last
  ver=$(cat "$k8s_tools/VERSION"); log "module proxy unreachable, using cached $ver"
else
  die "cannot resolve a Kubernetes $minor release from the module proxy"
fi
bin=$k8s_tools/$ver/bin
mkdir -p "$bin" "$k8s_tools/images"
log "Kubernetes $ver -> $bin"

# ---- Kubernetes binaries --------------------------------------------------------------
# the scheduler and the controller manager for the two-node cluster test
# (DaemonSets, Jobs, the scheduler's placement and its Pending reasons)
k8s_bins=(kube-apiserver kubelet kubectl kube-scheduler kube-controller-manager)
has_k8s() { local b; for b in "${k8s_bins[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
build_k8s() {
  local t0 work gomod n ldf
  t0=$(now)
  gomod=$( (cd / && go mod download -json "k8s.io/kubernetes@$ver") | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || die "go mod download k8s.io/kubernetes@$ver failed"
  work=$(mktemp -d /tmp/k8sbuild.XXXXXX)
  n=${ver#v1.}                       # 34.12
  {
    echo "module k8sbuild"
    echo
    grep -E '^go [0-9]' "$gomod" | head -1
    grep -E '^godebug ' "$gomod" || true   # same GODEBUG defaults as upstream's builds
    echo
    echo "require k8s.io/kubernetes $ver"
    echo
    echo "replace ("
    # every staging module kubernetes requires as v0.0.0 -> its v0.<minor>.<patch> release
    sed -n 's/^[[:space:]]*\(k8s\.io\/[a-z0-9.-]*\) v0\.0\.0$/\1/p' "$gomod" | sort -u |
      while read -r m; do echo "	$m => $m v0.$n"; done
    echo ")"
  } > "$work/go.mod"
  log "building ${k8s_bins[*]} $ver (throw-away module $work)"
  # kubelet, apiserver and kubectl report this version (Node.status.nodeInfo.kubeletVersion...)
  ldf="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=${n%%.*}"
    ldf="$ldf -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  (cd "$work" && go build -trimpath -ldflags "$ldf" -o "$work/out/" \
      "${k8s_bins[@]/#/k8s.io/kubernetes/cmd/}") ||
    die "Kubernetes build failed"
  for b in "${k8s_bins[@]}"; do mv -f "$work/out/$b" "$bin/$b"; done
  rm -rf "$work"
  log "Kubernetes binaries built in $(since "$t0")s"
}
if has_k8s; then log "${k8s_bins[*]}: cached"; else build_k8s; fi

# ---- etcd -------------------------------------------------------------------------------
build_etcd() {
  local t0 work ev
  t0=$(now)
  ev=${ETCD_VERSION:-$(versions go.etcd.io/etcd/server/v3 | grep -E '^v3\.6\.[0-9]+$' | head -1)}
  [ -n "$ev" ] || die "cannot resolve an etcd 3.6 release"
  work=$(mktemp -d /tmp/etcdbuild.XXXXXX)
  log "building etcd $ev"
  (cd "$work" && printf 'module etcdbuild\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ev" > go.mod &&
   go get "go.etcd.io/etcd/server/v3@$ev" >/dev/null 2>&1 &&
   go build -trimpath -ldflags "-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3) || die "etcd build failed"
  mv -f "$work/etcd" "$bin/etcd"
  rm -rf "$work"
  echo "$ev" > "$bin/.etcd-version"
  log "etcd $ev built in $(since "$t0")s"
}
if [ -x "$bin/etcd" ]; then log "etcd $(cat "$bin/.etcd-version" 2>/dev/null): cached"; else build_etcd; fi

# ---- crictl -----------------------------------------------------------------------------
if [ -x "$tools/peer/bin/crictl" ]; then
  log "crictl: reusing $tools/peer/bin/crictl"
elif [ -x "$bin/crictl" ]; then
  log "crictl: cached"
else
  t0=$(now)
  log "building crictl $crictl_version"
  GOBIN=$bin go install -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${crictl_version#v}" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$crictl_version" || die "crictl build failed"
  log "crictl built in $(since "$t0")s"
fi

# ---- images -----------------------------------------------------------------------------
# busybox: the project's own deterministic archive (scripts/mkimage.sh, cached by stamp)
bash "$root/scripts/mkimage.sh" "$k8s_tools/images" >/dev/null
# pause: a static Go /pause (reaps zombies, exits on SIGINT/SIGTERM) as a one-layer OCI
# archive, rebuilt when this script changes.
pause_img=registry.k8s.io/pause:3.10.1
pause_stamp=$(printf '%s\n' "$(sha256sum < "${BASH_SOURCE[0]}")" "$pause_img" "$(go env GOVERSION)" | sha256sum | cut -c1-64)
if [ "$(cat "$k8s_tools/images/.pause.stamp" 2>/dev/null)" != "$pause_stamp" ] || [ ! -f "$k8s_tools/images/pause.tar" ]; then
  work=$(mktemp -d /tmp/pausebuild.XXXXXX)
  mkdir -p "$work/src" "$work/rootfs" "$work/layout/blobs/sha256"
  cat > "$work/src/main.go" <<'EOF'
// pause: the pod sandbox's init process. Waits for SIGINT/SIGTERM, reaps children.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
EOF
  printf 'module pause\n\ngo 1.22\n' > "$work/src/go.mod"
  (cd "$work/src" && go build -trimpath -ldflags "-s -w" -o "$work/rootfs/pause" .) || die "pause build failed"
  sha() { sha256sum "$1" | cut -d' ' -f1; }
  blob() { local d; d=$(sha "$1"); mv "$1" "$work/layout/blobs/sha256/$d"; echo "$d $(stat -c %s "$work/layout/blobs/sha256/$d")"; }
  tar -C "$work/rootfs" --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$work/layer.tar" pause
  diffid=$(sha "$work/layer.tar"); gzip -n -9 "$work/layer.tar"
  read -r ldig lsize < <(blob "$work/layer.tar.gz")
  printf '{"architecture":"amd64","os":"linux","config":{"User":"65535:65535","Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diffid" > "$work/config"
  read -r cdig csize < <(blob "$work/config")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$cdig" "$csize" "$ldig" "$lsize" > "$work/manifest"
  read -r mdig msize < <(blob "$work/manifest")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$mdig" "$msize" "$pause_img" "${pause_img##*:}" > "$work/layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
  tar -C "$work/layout" --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$k8s_tools/images/pause.tar.tmp" oci-layout index.json blobs
  mv -f "$k8s_tools/images/pause.tar.tmp" "$k8s_tools/images/pause.tar"
  echo "$pause_stamp" > "$k8s_tools/images/.pause.stamp"
  rm -rf "$work"
  log "pause image $pause_img built"
fi

echo "$ver" > "$k8s_tools/VERSION"
for b in etcd kube-apiserver kubelet kubectl; do printf '  %-15s %s\n' "$b" "$bin/$b"; done
echo "  crictl          $([ -x "$tools/peer/bin/crictl" ] && echo "$tools/peer/bin/crictl" || echo "$bin/crictl")"
echo "  images          $k8s_tools/images/{busybox,pause}.tar"

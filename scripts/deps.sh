#!/usr/bin/env bash
# deps.sh - install the integration-test dependencies (idempotent, fast when cached).
#
#   * Debian packages: runc crun busybox-static criu containernetworking-plugins
#     iproute2 procps, and libseccomp-dev gcc libc6-dev to build the shim (apt is
#     skipped entirely when all are installed; needs root otherwise).
#   * containerd, ctr and containerd-shim-runc-v2 for every version in
#     $CONTAINERD_VERSIONS (default "2.4.2 2.2.9 1.7.36"), built from the Go module
#     proxy into .tools/containerd/<version>/bin/ unless already there (1.x from a
#     copy of the module source: `go install` refuses 1.7's go.mod).
#   * nerdctl (scripts/peer/nerdctl-build.sh) into .tools/peer/bin/nerdctl.
#
# .tools/ lives at the repository root (gitignored); the script works from any cwd.
# env: CONTAINERD_VERSIONS, TOOLS_DIR (default <repo>/.tools)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${TOOLS_DIR:-$root/.tools}
versions=${CONTAINERD_VERSIONS:-2.4.2 2.2.9 1.7.36}
# libseccomp-dev and gcc: the shim links runc's libcontainer with seccomp,
# statically (make build).
pkgs=(runc crun runsc busybox-static criu containernetworking-plugins iproute2 procps libseccomp-dev gcc libc6-dev)
# gVisor from the Go module proxy (a pseudo-version of gVisor's go-gettable
# branch). Debian's runsc package (2022, ptrace only) is installed beside it.
runsc_version=${RUNSC_VERSION:-v0.0.0-20260905035102-160fafc42237}

log() { printf 'deps.sh: %s\n' "$*" >&2; }

# ---- Debian packages -----------------------------------------------------------
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" -eq 0 ] || { log "missing packages: ${missing[*]} (run as root)"; exit 1; }
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${pkgs[@]}"
fi

# ---- containerd builds ---------------------------------------------------------
# has_version BIN VERSION: BIN exists and its --version output names VERSION
# (e.g. "containerd github.com/containerd/containerd/v2 2.4.2+unknown").
has_version() {
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -Eq "[ v]$2([+ -]|\$)"
}

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH=/usr/local/go/bin:$PATH
fi

# build_containerd1 VERSION BIN: containerd 1.x. `go install ...@v1.7.x` is
# refused ("go.mod ... contains one or more exclude directives"), so build
# inside a writable copy of the module from the module cache.
build_containerd1() {
  local v=$1 bin=$2 mod src
  # Outside any module (cd /), so no go.mod or go.sum is touched.
  mod=$(cd / && go mod download -json "github.com/containerd/containerd@v$v" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$mod" ] || { log "go mod download containerd v$v failed"; return 1; }
  src=$(mktemp -d)
  cp -r "$mod/." "$src" && chmod -R u+w "$src"
  if ! (cd "$src" && GOFLAGS=-mod=mod go build -tags no_btrfs -o "$bin/" \
        ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2); then
    rm -rf "$src"; return 1
  fi
  rm -rf "$src"
}

for v in $versions; do
  bin=$tools/containerd/$v/bin
  if has_version "$bin/containerd" "$v" && has_version "$bin/ctr" "$v" &&
     [ -x "$bin/containerd-shim-runc-v2" ]; then
    continue
  fi
  command -v go >/dev/null || { log "go not found (needed to build containerd $v)"; exit 1; }
  log "building containerd $v into $bin (takes a few minutes)"
  mkdir -p "$bin"
  case $v in
    1.*) build_containerd1 "$v" "$bin" ;;
    *)
      # go install pkg@version ignores the current module, so the cwd does not matter.
      GOFLAGS=-mod=mod GOBIN=$bin go install -tags no_btrfs \
        "github.com/containerd/containerd/v2/cmd/containerd@v$v" \
        "github.com/containerd/containerd/v2/cmd/ctr@v$v" \
        "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@v$v" ;;
  esac
  has_version "$bin/containerd" "$v" || { log "built containerd does not report version $v"; exit 1; }
done

# ---- runsc ---------------------------------------------------------------------
# It must be static (CGO_ENABLED=0): a dynamic build fails inside its own
# sandbox ("error executing umounter").
runsc_dir=$tools/runsc
if [ "$(cat "$runsc_dir/.version" 2>/dev/null)" != "$runsc_version" ] || [ ! -x "$runsc_dir/runsc" ]; then
  command -v go >/dev/null || { log "go not found (needed to build runsc)"; exit 1; }
  log "building runsc $runsc_version into $runsc_dir (takes a couple of minutes)"
  mkdir -p "$runsc_dir"
  CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN=$runsc_dir go install "gvisor.dev/gvisor/runsc@$runsc_version"
  echo "$runsc_version" > "$runsc_dir/.version"
fi

# ---- runc CLI of the version the shim links (make bench) ---------------------
# containerd's runc shim is benchmarked with Debian's runc 1.1.5 and with a runc
# CLI of the same version as the shim's libcontainer, so the gain measured is
# the design's, not a runc upgrade's. Keep in step with go.mod.
runc_lib_version=$(cd "$root" && go list -m -f '{{.Version}}' github.com/opencontainers/runc 2>/dev/null || echo v1.5.3)
runc_cli=$tools/runc-${runc_lib_version#v}/runc
if [ ! -x "$runc_cli" ]; then
  log "building runc $runc_lib_version CLI into $(dirname "$runc_cli")"
  mkdir -p "$(dirname "$runc_cli")"
  CGO_ENABLED=1 GOFLAGS=-mod=mod GOBIN=$(dirname "$runc_cli") go install -tags seccomp \
    -ldflags "-X main.version=${runc_lib_version#v}" "github.com/opencontainers/runc@$runc_lib_version"
fi

# ---- promtool (lints the metrics exposition in the tests) -----------------------
promtool_version=${PROMTOOL_VERSION:-v0.316.0}
if [ "$(cat "$tools/bin/.promtool-version" 2>/dev/null)" != "$promtool_version" ] || [ ! -x "$tools/bin/promtool" ]; then
  command -v go >/dev/null || { log "go not found (needed to build promtool)"; exit 1; }
  log "building promtool $promtool_version into $tools/bin (takes a few minutes)"
  mkdir -p "$tools/bin"
  GOFLAGS=-mod=mod GOBIN=$tools/bin go install "github.com/prometheus/prometheus/cmd/promtool@$promtool_version"
  echo "$promtool_version" > "$tools/bin/.promtool-version"
fi

# ---- nerdctl (TestNerdctl; skipped without it) -----------------------------------
TOOLS_DIR=$tools bash "$root/scripts/peer/nerdctl-build.sh"

# ---- summary -------------------------------------------------------------------
first_line() { "$@" 2>&1 | head -n1; }
echo "runc:       $(first_line runc --version); $runc_cli ($(first_line "$runc_cli" --version))"
echo "busybox:    $(first_line busybox | cut -d' ' -f1-2)"
echo "criu:       $(first_line criu --version)"
echo "promtool:   $tools/bin/promtool ($promtool_version)"
echo "runsc:      $runsc_dir/runsc ($runsc_version); Debian: $(first_line /usr/bin/runsc --version)"
echo "nerdctl:    $tools/peer/bin/nerdctl ($(first_line "$tools/peer/bin/nerdctl" --version))"
echo "cni:        $(find /usr/lib/cni -maxdepth 1 -type f -printf '%f\n' 2>/dev/null | sort | tr '\n' ' ')"
for v in $versions; do
  echo "containerd: $tools/containerd/$v/bin ($(first_line "$tools/containerd/$v/bin/containerd" --version | awk '{print $3}'))"
done

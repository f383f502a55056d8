#!/usr/bin/env bash
# helm-lint.sh - Helm's own linter over contrib/helm/containerd-shim-custom-v2,
# with the default values and with every option on (all handlers, the
# aggregator and its PodMonitor), a render of both (`helm template`), and a
# check that the plain YAML in contrib/k8s is what the chart renders.
#
#   helm-lint.sh            lint, render, fail if contrib/k8s/*.yaml is stale
#   helm-lint.sh --update   write contrib/k8s/*.yaml from the chart
#
# helm is built from the Go module proxy into .tools/bin the first time (a
# few minutes) and again only when HELM_VERSION changes (stamped in
# .tools/bin/.helm-version, as lint.sh does for golangci-lint).
# env: HELM_VERSION (default v4.3.2), TOOLS_DIR (default <repo>/.tools)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${TOOLS_DIR:-$root/.tools}
version=${HELM_VERSION:-v4.3.2}
helm=$tools/bin/helm
chart=$root/contrib/helm/containerd-shim-custom-v2

log() { printf 'helm-lint.sh: %s\n' "$*" >&2; }

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  PATH=/usr/local/go/bin:$PATH
fi
if [ "$(cat "$tools/bin/.helm-version" 2>/dev/null)" != "$version" ] || [ ! -x "$helm" ]; then
  log "building helm $version into $tools/bin (takes a few minutes)"
  mkdir -p "$tools/bin"
  GOFLAGS=-mod=mod GOBIN=$tools/bin go install "helm.sh/helm/v4/cmd/helm@$version"
  echo "$version" > "$tools/bin/.helm-version"
fi

all=(--set 'handlers={custom-runc,custom-runsc,custom-runc-sb,custom-runsc-sb}'
     --set aggregator.enabled=true --set aggregator.podMonitor.enabled=true)
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" "${all[@]}"
"$helm" template check "$chart" -n kube-system > /dev/null
"$helm" template check "$chart" -n kube-system "${all[@]}" > /dev/null

# contrib/k8s: the chart rendered for kubectl apply (no helm hooks: the
# pre-delete drain would run at once)
render() { # render ARGS...: a file's content
  printf '# Generated from contrib/helm/containerd-shim-custom-v2 by scripts/helm-lint.sh --update:\n'
  printf '# do not edit. helm template containerd-shim-custom-v2 -n kube-system --no-hooks %s\n' "$*"
  "$helm" template containerd-shim-custom-v2 "$chart" -n kube-system --no-hooks "$@"
}
stale=0
while IFS='|' read -r file args; do
  read -r -a a <<< "$args"
  if [ "${1:-}" = --update ]; then
    render "${a[@]}" > "$root/contrib/k8s/$file"
    log "wrote contrib/k8s/$file"
  elif ! diff -u "$root/contrib/k8s/$file" <(render "${a[@]}") >&2; then
    log "contrib/k8s/$file is not what the chart renders: scripts/helm-lint.sh --update"
    stale=1
  fi
done <<'EOF'
containerd-shim-custom-v2.yaml|
runtimeclass.yaml|--show-only templates/runtimeclasses.yaml --set handlers={custom-runc,custom-runsc,custom-runc-sb,custom-runsc-sb}
aggregator.yaml|--show-only templates/aggregator.yaml --set aggregator.enabled=true --set aggregator.podMonitor.enabled=true
EOF
[ "$stale" = 0 ] || exit 1
log "chart ok (helm $version)"

#!/usr/bin/env bash
# cluster.sh - the cluster install, end to end: two kubelets on this machine
# (node.sh; separate root dirs, ports, containerd instances, cgroup roots, node
# names) against one apiserver with a scheduler and a controller manager, and the
# chart (contrib/helm/containerd-shim-custom-v2) installing the runtime from its
# image (make image) on node 1 only. No registry: each node's containerd imports
# the images. Checks, in order:
#   install     helm install of the PREVIOUS version (built from git history,
#               PREV_REF): the installer writes the drop-in, restarts node 1's
#               containerd and labels node 1 (installed=true, version); node 2 stays
#               unlabelled; time from helm install to the label
#   schedule    Pods with runtimeClassName custom-runc / custom-runsc and no node
#               land on node 1, never on node 2 (a plain Pod runs on node 2)
#   upgrade     helm upgrade to this tree's image: the DaemonSet rolls, the label
#               says the new version; the Pods started before keep running (same
#               containers, no restart) and exec, logs, CRI stats work on them, their
#               shims still run the old binary's inode; new Pods get the new binary;
#               a delete run by the new binary cleans up a bundle the old one wrote
#               (an old Pod's shim killed: containerd runs `<new binary> delete`)
#   rollback    helm rollback to the first release: the same, the other way
#   disrupted   Pods disrupted across upgrade and rollback: must be 0
#   uninstall   helm uninstall: the label goes, then the drop-in and the binaries,
#               containerd restarted without the handlers; a new RuntimeClass Pod
#               stays Pending with the scheduler's reason
# Prints PASS/FAIL per check, the figures, and exits 1 if a check failed.
# env: PREV_REF (the earlier commit built from git history), CLUSTER_DIR
#      (/tmp/k8s-cluster), KEEP=1 (leave the cluster up)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
k=$root/scripts/k8s
tools=${TOOLS_DIR:-$root/.tools}
C=${CLUSTER_DIR:-/tmp/k8s-cluster}
N1=$C/n1 N2=$C/n2
# the first commit whose installer takes the settings this chart passes
PREV_REF=${PREV_REF:-747d9af}
REPO=ghcr.io/custom-runtime/containerd-shim-custom-v2
NS=custom-runtime
REL=shim
HELM=$tools/bin/helm
out=$root/_output/k8s
mkdir -p "$out"

# node 1 is the control plane and the installed node; node 2 joins it
node1() { K8S_E2E_DIR=$N1 CONTROLLERS=1 HANDLERS_BY=installer bash "$k/node.sh" "$@"; }
node2() {
  K8S_E2E_DIR=$N2 CONTROL_DIR=$N1 HANDLERS_BY=installer CGROUP_ROOT=/k8s-cluster-n2 \
    NODE_NAME=$NODE2 KUBELET_PORT=11260 KUBELET_HEALTHZ_PORT=11258 \
    BRIDGE=k8se2e1 POD_SUBNET=10.245.1.0/24 POD_GW=10.245.1.1 bash "$k/node.sh" "$@"
}
eval "$(K8S_E2E_DIR=$N1 bash "$k/node.sh" vars)" || exit 2
NODE1=$NODE_NAME
# the second name must resolve to loopback too (the apiserver reaches kubelets by name)
NODE2=localhost
[ "$NODE1" != localhost ] || { echo "cluster.sh: this host's name does not resolve to loopback; node 1 took 'localhost'" >&2; exit 2; }
export KUBECONFIG=$N1/etc/admin.kubeconfig
kc() { "$K8S_BIN/kubectl" "$@"; }
cri() { "$CRICTL" --config /dev/null --runtime-endpoint "unix://$N1/containerd/containerd.sock" --timeout 30s "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
fails=0
check() { # check NAME OK(0/1) DETAIL
  if [ "$2" = 0 ]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; fails=$((fails + 1)); fi
}
until_true() { # until_true TIMEOUT CMD...
  local end=$(( $(date +%s) + $1 )); shift
  until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 1; done
}
label() { kc get node "$1" -o jsonpath="{.metadata.labels.runtime\.custom-runtime\.io/$2}"; }
label_is() { [ "$(label "$1" "$2")" = "$3" ]; }

# ---------------------------------------------------------------------- images
# this tree's image (make image has run) and the previous version's, built from
# git history in a worktree (cached by commit)
new_tar=$root/_output/image/image.tar
[ -f "$new_tar" ] || { echo "cluster.sh: $new_tar missing (make image)" >&2; exit 2; }
# the tags are the images' own (index.json's ref name): a commit made since
# `make image` ran does not change what was built
tag_of() { tar -xOf "$1" index.json | sed -n 's/.*"org.opencontainers.image.ref.name": *"[^"]*:\([^"]*\)".*/\1/p' | head -1; }
NEW=$(tag_of "$new_tar")
prev=$(cd "$root" && git rev-parse --short "$PREV_REF^{commit}") || { echo "cluster.sh: $PREV_REF is not in this clone's history" >&2; exit 2; }
old_tar=$tools/k8s/prev/$prev/image.tar
if [ ! -f "$old_tar" ]; then
  w=$(mktemp -d /tmp/prev-build.XXXXXX)
  echo "building the previous version ($prev) from git history ($w)"
  (cd "$root" && git worktree add -q --detach "$w/src" "$prev") || exit 2
  if ! make -C "$w/src" build image >"$out/prev-build.log" 2>&1; then
    tail -20 "$out/prev-build.log"; (cd "$root" && git worktree remove --force "$w/src"); exit 2
  fi
  mkdir -p "$(dirname "$old_tar")"
  cp "$w/src/_output/image/image.tar" "$old_tar.tmp" && mv "$old_tar.tmp" "$old_tar"
  (cd "$root" && git worktree remove --force "$w/src"); rm -rf "$w"
fi
OLD=$(tag_of "$old_tar")
[ -n "$OLD" ] && [ -n "$NEW" ] || { echo "cluster.sh: no tag in $old_tar or $new_tar" >&2; exit 2; }
[ "$OLD" != "$NEW" ] || { echo "cluster.sh: the previous version is this one ($NEW)" >&2; exit 2; }

# ---------------------------------------------------------------------- cluster
[ -x "$HELM" ] || bash "$root/scripts/helm-lint.sh" >/dev/null || exit 2
node2 down >/dev/null 2>&1; node1 down >/dev/null 2>&1
# a fresh cluster: the chart's objects from an earlier run would be adopted
rm -rf "$C/n1/etcd" "$C/n1/containerd" "$C/n2/containerd" "$C/n1/etc/conf.d"
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: cluster left up (KUBECONFIG=$KUBECONFIG)"; return; fi
  node2 down >/dev/null 2>&1; node1 down >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 143' TERM INT   # so that EXIT runs the cleanup
node1 up || exit 1
node2 up || exit 1
untainted() { [ -z "$(kc get nodes -o jsonpath='{.items[*].spec.taints}')" ]; }
until_true 60 untainted || { echo "cluster.sh: nodes still tainted: $(kc get nodes -o jsonpath='{.items[*].spec.taints}')" >&2; exit 1; }
for n in "$N1" "$N2"; do
  for f in "$new_tar" "$old_tar"; do
    "$CTRD_BIN/ctr" -a "$n/containerd/containerd.sock" -n k8s.io images import "$f" >/dev/null || exit 1
  done
done
echo "images $REPO:$OLD and $REPO:$NEW imported on both nodes"

# The restart runs in the host's namespaces, entered through node 1's kubelet: this
# VM's PID 1 (a firecracker init) refuses nsenter even to the host's root.
# No kube-proxy runs: the installer and the uninstall hook reach the API server on
# the host's loopback (hostNetwork), as clusters without a Service proxy for node
# agents do.
values=$C/values.yaml
cat > "$values" <<EOF
image: {repository: $REPO, pullPolicy: Never}
handlers: [custom-runc, custom-runsc]
systemdCgroup: false
restrictOOMScoreAdj: true
runsc: $RUNSC_BIN
prefix: $N1/bin
containerd:
  restart: if-changed
  restartCommand: nsenter -t $(cat "$N1/run/kubelet.pid") -m -u -i -n -p -- $N1/bin/restart-containerd
  socket: $N1/containerd/containerd.sock
  config: $N1/etc/containerd.toml
nodeSelector: {kubernetes.io/hostname: $NODE1}
hostNetwork: true
apiServer: {host: 127.0.0.1, port: "${APISERVER_PORT:-16443}"}
EOF

# the plain YAML in contrib/k8s (rendered from the chart) is what the API server takes
kc apply --dry-run=server -f "$root/contrib/k8s/containerd-shim-custom-v2.yaml" -f "$root/contrib/k8s/runtimeclass.yaml" >/dev/null
check plain-yaml $? "contrib/k8s/containerd-shim-custom-v2.yaml and runtimeclass.yaml accepted (server-side dry run)"

# ---------------------------------------------------------------------- install
ctrd_pid=$(cat "$N1/run/containerd.pid")
t=$(now)
"$HELM" install "$REL" "$root/contrib/helm/containerd-shim-custom-v2" -n "$NS" --create-namespace \
  -f "$values" --set image.tag="$OLD" >/dev/null || exit 1
until_true 180 label_is "$NODE1" version "$OLD"
ok=$?; t_install=$(since "$t")
check install-label "$ok" "node $NODE1 labelled installed=$(label "$NODE1" installed) version=$(label "$NODE1" version) ${t_install}s after helm install"
[ "$ok" = 0 ] || { kc -n "$NS" logs ds/"$REL-installer" --tail=30; exit 1; }
[ -z "$(label "$NODE2" installed)" ]
check install-other-node $? "node $NODE2: no runtime label, no installer Pod ($(kc -n "$NS" get pods -o wide --no-headers | grep -c " $NODE2 ") there)"
grep -q custom-runc "$N1/etc/conf.d/custom-runtime.toml" 2>/dev/null
[ "$(cat "$N1/run/containerd.pid")" != "$ctrd_pid" ] && ! kill -0 "$ctrd_pid" 2>/dev/null
check install-restart $? "the installer restarted node 1's containerd (pid $ctrd_pid -> $(cat "$N1/run/containerd.pid")) to load its drop-in ($(grep -c '^\[' "$N1/etc/conf.d/custom-runtime.toml" 2>/dev/null) tables)"

podspec() { # podspec NAME CLASS|"" [NODE]
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default}
spec:
  ${2:+runtimeClassName: $2}
  ${3:+nodeName: $3}
  terminationGracePeriodSeconds: 2
  automountServiceAccountToken: false
  containers:
  - name: c
    image: ghcr.io/containerd/busybox:1.36
    imagePullPolicy: Never
    command: [sh, -c, 'echo started \$(date +%s); i=0; while true; do i=\$((i+1)); echo tick \$i; sleep 2; done']
EOF
}
running() { [ "$(kc get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null)" = Running ]; }
node_of() { kc get pod "$1" -o jsonpath='{.spec.nodeName}'; }
# the shim serving a Pod: started with -id <its sandbox id>
sandbox_of() { cri pods --label "io.kubernetes.pod.uid=$(kc get pod "$1" -o jsonpath='{.metadata.uid}')" -q | head -1; }
shim_of() {
  local s; s=$(sandbox_of "$1")
  ps -eo pid=,args= | awk -v id="$s" '$2 ~ /containerd-shim-custom-v2$/ && index($0 " ", " " id " ") {print $1; exit}'
}
shim_version() { "/proc/$1/exe" -v 2>/dev/null | awk '$1 == "Version:" {print $2}'; }
state() { kc get pod "$1" -o jsonpath='{.metadata.uid} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount}'; }

# ---------------------------------------------------------------------- schedule
for p in old-runc:custom-runc old-runsc:custom-runsc spread-1:custom-runc spread-2:custom-runc spread-3:custom-runsc; do
  podspec "${p%%:*}" "${p#*:}" | kc apply -f - >/dev/null
done
podspec plain "" "$NODE2" | kc apply -f - >/dev/null
all_running() { local p; for p in "$@"; do running "$p" || return 1; done; }
until_true 180 all_running old-runc old-runsc spread-1 spread-2 spread-3 plain
check schedule-running $? "$(kc get pods -o wide --no-headers | awk '{printf "%s:%s@%s ", $1, $3, $7}')"
on2=$(for p in old-runc old-runsc spread-1 spread-2 spread-3; do [ "$(node_of "$p")" = "$NODE1" ] || echo "$p"; done)
[ -z "$on2" ]
check schedule-node $? "5 RuntimeClass Pods on $NODE1, none elsewhere ${on2:+(not on $NODE1: $on2)}; plain Pod on $(node_of plain)"
kc delete pod spread-1 spread-2 spread-3 plain --wait=false >/dev/null

declare -A before=()
for p in old-runc old-runsc; do before[$p]=$(state "$p"); done
# every kept Pod's shim and the version it started with
declare -A shim=() shimver=()
for p in old-runc old-runsc; do shim[$p]=$(shim_of "$p"); shimver[$p]=$OLD; done
[ -n "${shim[old-runc]}" ] && [ "$(shim_version "${shim[old-runc]}")" = "$OLD" ]
check old-shim $? "old-runc's shim pid ${shim[old-runc]} runs version $(shim_version "${shim[old-runc]}"), old-runsc's ${shim[old-runsc]}"

# serves PODS...: exec, logs and CRI stats work on each
serves() {
  local p c r=0
  for p in "$@"; do
    [ "$(kc exec "$p" -- sh -c 'echo ok')" = ok ] || { echo "  $p: exec failed"; r=1; }
    kc logs "$p" --tail=1 | grep -q tick || { echo "  $p: logs failed"; r=1; }
    c=$(kc get pod "$p" -o jsonpath='{.status.containerStatuses[0].containerID}'); c=${c#containerd://}
    cri stats -o json --id "$c" | grep -q usageCoreNanoSeconds || { echo "  $p: CRI stats failed"; r=1; }
  done
  return $r
}

# rollout TAG NAME: helm upgrade (or rollback), until the label says TAG
rollout() {
  local tag=$1 name=$2 t ok; t=$(now)
  if [ "$name" = rollback ]; then "$HELM" rollback "$REL" 1 -n "$NS" >/dev/null
  else "$HELM" upgrade "$REL" "$root/contrib/helm/containerd-shim-custom-v2" -n "$NS" -f "$values" --set image.tag="$tag" >/dev/null; fi
  until_true 180 label_is "$NODE1" version "$tag"; ok=$?
  kc -n "$NS" rollout status ds --timeout=60s >/dev/null 2>&1
  check "$name-label" "$ok" "version=$(label "$NODE1" version) installed=$(label "$NODE1" installed) $(since "$t")s after helm $name"
  local p r=0
  for p in "${!before[@]}"; do
    [ "$(state "$p")" = "${before[$p]}" ] || { echo "  $p: was ${before[$p]}, now $(state "$p")"; r=1; }
  done
  check "$name-kept" "$r" "Pods started before ($(echo "${!before[@]}")) run on: same containers, restartCount 0"
  serves "${!before[@]}"
  check "$name-serves" $? "exec, logs, CRI stats on $(echo "${!before[@]}")"
  local d=""; r=0
  for p in "${!shim[@]}"; do
    d="$d $p:${shimver[$p]}"
    [ "$(shim_version "${shim[$p]}")" = "${shimver[$p]}" ] || { echo "  $p: shim ${shim[$p]} runs '$(shim_version "${shim[$p]}")', not ${shimver[$p]}"; r=1; }
  done
  check "$name-kept-shims" "$r" "the kept Pods' shims run the binary they started with:$d"
  # new Pods on each backend run the installed version
  local n="$name-runc" g="$name-runsc"
  podspec "$n" custom-runc | kc apply -f - >/dev/null
  podspec "$g" custom-runsc | kc apply -f - >/dev/null
  until_true 120 all_running "$n" "$g"
  local vn vg; vn=$(shim_version "$(shim_of "$n")"); vg=$(shim_version "$(shim_of "$g")")
  [ "$vn" = "$tag" ] && [ "$vg" = "$tag" ]
  check "$name-new-pods" $? "$n's shim runs $vn, $g's $vg (want $tag)"
  before[$n]=$(state "$n"); before[$g]=$(state "$g")
  shim[$n]=$(shim_of "$n"); shim[$g]=$(shim_of "$g"); shimver[$n]=$tag; shimver[$g]=$tag
}

rollout "$NEW" upgrade
# a bundle the old binary wrote, cleaned up by the new one: old-runc's shim killed,
# containerd runs the installed (new) binary's delete; the kubelet restarts it
kill -KILL "${shim[old-runc]}"
sb=$(sandbox_of old-runc)
gone() { [ ! -e "$N1/containerd/state/io.containerd.runtime.v2.task/k8s.io/$sb" ]; }
until_true 60 gone
check upgrade-cleanup $? "old-runc's shim (v$OLD) killed: its sandbox bundle removed by $NEW's delete; $(grep -c "cleanup\|delete" "$N1/logs/containerd.log" 2>/dev/null || true) cleanup lines in containerd's log"
unset 'before[old-runc]' 'shim[old-runc]'
until_true 120 running old-runc
check upgrade-restarted $? "old-runc back Running (restarts: $(kc get pod old-runc -o jsonpath='{.status.containerStatuses[0].restartCount}'), sandbox $(sandbox_of old-runc | cut -c1-12))"

rollout "$OLD" rollback

disrupted=0
for p in "${!before[@]}"; do [ "$(state "$p")" = "${before[$p]}" ] || disrupted=$((disrupted + 1)); done
[ "$disrupted" = 0 ]
check disrupted $? "Pods disrupted across upgrade and rollback: $disrupted of ${#before[@]} ($(echo "${!before[@]}"))"

# ---------------------------------------------------------------------- uninstall
kc delete pods --all --grace-period=2 --timeout=120s >/dev/null
t=$(now)
"$HELM" uninstall "$REL" -n "$NS" --wait --timeout 5m >/dev/null
ok=$?
check uninstall "$ok" "helm uninstall in $(since "$t")s"
[ -z "$(label "$NODE1" installed)$(label "$NODE1" version)" ]
check uninstall-label $? "node $NODE1 labels: '$(label "$NODE1" installed)' '$(label "$NODE1" version)'"
[ ! -e "$N1/etc/conf.d/custom-runtime.toml" ] && [ ! -e "$N1/bin/containerd-shim-custom-v2" ]
check uninstall-files $? "drop-in and shim binary removed from node $NODE1"
until_true 60 sh -c "! '$CRICTL' --config /dev/null -r unix://$N1/containerd/containerd.sock info 2>/dev/null | grep -q custom-runc"
check uninstall-containerd $? "containerd restarted without the custom handlers"
podspec after custom-runc | kc apply -f - >/dev/null
reason() { kc get pod after -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}: {.status.conditions[?(@.type=="PodScheduled")].message}'; }
until_true 60 sh -c "'$K8S_BIN/kubectl' get pod after -o jsonpath='{.status.conditions[?(@.type==\"PodScheduled\")].reason}' | grep -q Unschedulable"
ok=$?
sleep 3
[ "$ok" = 0 ] && [ "$(kc get pod after -o jsonpath='{.status.phase}')" = Pending ] && reason | grep -q "didn't match Pod's node affinity/selector"
check uninstall-pending $? "Pod 'after' (custom-runc): $(kc get pod after -o jsonpath='{.status.phase}'), $(reason)"
kc delete pod after --wait=false >/dev/null

echo "--- figures: label ${t_install}s after helm install; Pods disrupted: $disrupted"
[ "$fails" = 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL ($fails)"
[ "$fails" = 0 ]

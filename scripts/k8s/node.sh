#!/usr/bin/env bash
# node.sh - a real single-node Kubernetes on loopback whose Pods run through
# containerd-shim-custom-v2 (RuntimeClasses custom-runc and custom-runsc, and
# custom-runc-sb and custom-runsc-sb: the same backends on containerd's Sandbox
# API, pods without pause containers).
#
#   node.sh up      certificates and configs (once), a private containerd with CRI,
#                   etcd, kube-apiserver, kubelet; images, RuntimeClasses, and the
#                   shim metrics aggregator as a static Pod; waits for node Ready
#   node.sh test    scripts/k8s/test.sh against the running node
#   node.sh down    stops everything up started (by recorded pid) and undoes its
#                   host changes (sysctls, bridge, cgroups, kubelet host dirs, mounts)
#   node.sh env     shell exports for kubectl and crictl:  eval "$(node.sh env)"
#   node.sh status  processes, node and Pods
#   node.sh clean   down, then remove the state directory (PKI included)
#
# No scheduler and no controller-manager: Pods set spec.nodeName. Everything
# listens on 127.0.0.1 only. State, logs and PKI live under $K8S_E2E_DIR
# (default /tmp/k8s-e2e); logs in $K8S_E2E_DIR/logs/.
#
# Inputs (all from this repository, nothing from outside it at run time):
#   bin/containerd-shim-custom-v2           `make build` (copied into the state dir at up)
#   .tools/k8s/<version>/bin                scripts/k8s/build.sh
#   .tools/containerd/$CONTAINERD_VERSION   scripts/deps.sh (default 2.4.2)
#   .tools/runsc/runsc                      scripts/deps.sh
# env: K8S_E2E_DIR, CONTAINERD_VERSION, SHIM_BIN, RUNSC_BIN, CNI_BIN (/usr/lib/cni),
#      NODE_NAME, ports: ETCD_PORT APISERVER_PORT KUBELET_PORT KUBELET_HEALTHZ_PORT METRICS_PORT,
#      RUNC_HANDLER (custom-runc), GVISOR_HANDLER (custom-runsc): handler and RuntimeClass names,
#      RUNC_POOL_HANDLER (custom-runc-pool): custom-runc-sb with pods_per_shim = 10
#      USERNS_HANDLER (custom-runc-userns), USERNS_SB_HANDLER (custom-runc-sb-userns): the runc
#        backend with no options table, on the pause path and on the Sandbox API, their
#        settings in $N/etc/custom-shim.toml (CONTAINERD_SHIM_CUSTOM_CONFIG): user-namespaced Pods
#      RUNC_SB_HANDLER (custom-runc-sb), GVISOR_SB_HANDLER (custom-runsc-sb): the same backends
#      with sandboxer = 'shim' (no pause container),
#      CRI_STATS=true (kubelet feature gate PodAndContainerStatsFromCRI: pod stats from
#      the shim's Stats instead of cAdvisor; give `test` the same value)
#      Two-node cluster (scripts/k8s/cluster.sh):
#      CONTROLLERS=1 also runs kube-scheduler and kube-controller-manager (DaemonSets,
#        Jobs, garbage collection, the scheduler's placement and Pending reasons);
#      CONTROL_DIR=DIR makes this a second node of the control plane that node.sh
#        started with K8S_E2E_DIR=DIR: containerd and a kubelet only, its certificates
#        signed by that node's CA (set CGROUP_ROOT, ports, NODE_NAME, BRIDGE, POD_*);
#      CGROUP_ROOT  the kubelet's cgroupRoot (default /): Pod cgroups of its own;
#      HANDLERS_BY=installer: containerd gets no handler of this shim and no shim
#        binary, but imports $N/etc/conf.d/*.toml, and $N/bin/restart-containerd
#        restarts it (the chart's installer writes and restarts); no RuntimeClasses,
#        no aggregator (the chart has them)
set -euo pipefail
umask 022

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tools=${TOOLS_DIR:-$root/.tools}
N=${K8S_E2E_DIR:-/tmp/k8s-e2e}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-2.4.2}
CTRD_BIN=$tools/containerd/$CONTAINERD_VERSION/bin
SHIM_BIN=${SHIM_BIN:-$root/bin/containerd-shim-custom-v2}
AGG_BIN=${AGG_BIN:-$(dirname "$SHIM_BIN")/containerd-shim-custom-metrics}
RUNSC_BIN=${RUNSC_BIN:-$tools/runsc/runsc}
CNI_BIN=${CNI_BIN:-/usr/lib/cni}
K8S_VERSION=${K8S_VERSION:-$(cat "$tools/k8s/VERSION" 2>/dev/null || true)}
K8S_BIN=$tools/k8s/$K8S_VERSION/bin
if [ -x "$tools/peer/bin/crictl" ]; then CRICTL=$tools/peer/bin/crictl; else CRICTL=$K8S_BIN/crictl; fi
IMAGES=$tools/k8s/images
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
BUSYBOX_IMAGE=ghcr.io/containerd/busybox:1.36

# The node's name must resolve to a loopback address: the apiserver reaches the
# kubelet (logs, exec) by the node's Hostname address (it refuses to proxy to a
# loopback InternalIP).
if [ -z "${NODE_NAME:-}" ]; then
  NODE_NAME=$(hostname | tr 'A-Z' 'a-z')
  case "$(getent ahostsv4 "$NODE_NAME" 2>/dev/null | awk 'NR==1{print $1}')" in
    127.*) ;;
    *) NODE_NAME=localhost ;;
  esac
fi
ETCD_PORT=${ETCD_PORT:-12379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-12380}
APISERVER_PORT=${APISERVER_PORT:-16443}
KUBELET_PORT=${KUBELET_PORT:-11250}
KUBELET_HEALTHZ_PORT=${KUBELET_HEALTHZ_PORT:-11248}
METRICS_PORT=${METRICS_PORT:-19324}
POD_SUBNET=${POD_SUBNET:-10.245.0.0/24}
POD_GW=${POD_GW:-10.245.0.1}
BRIDGE=${BRIDGE:-k8se2e0}
CRI_STATS=${CRI_STATS:-false}
# CRI handler (= RuntimeClass) names of the two backends
RUNC_HANDLER=${RUNC_HANDLER:-custom-runc}
GVISOR_HANDLER=${GVISOR_HANDLER:-custom-runsc}
# ... and on containerd's Sandbox API (sandboxer = 'shim'): the shim is the pod's
# sandbox (runc: a namespace holder process; gVisor: the runsc sandbox), no pause
RUNC_SB_HANDLER=${RUNC_SB_HANDLER:-custom-runc-sb}
GVISOR_SB_HANDLER=${GVISOR_SB_HANDLER:-custom-runsc-sb}
RUNC_POOL_HANDLER=${RUNC_POOL_HANDLER:-custom-runc-pool}
USERNS_HANDLER=${USERNS_HANDLER:-custom-runc-userns}
USERNS_SB_HANDLER=${USERNS_SB_HANDLER:-custom-runc-sb-userns}
# the kubelet's clusterDNS (no DNS server runs; ClusterFirst Pods get it in resolv.conf)
CLUSTER_DNS=${CLUSTER_DNS:-10.96.0.10}

CONTROLLERS=${CONTROLLERS:-0}
CONTROL_DIR=${CONTROL_DIR:-}
HANDLERS_BY=${HANDLERS_BY:-node.sh}
CGROUP_ROOT=${CGROUP_ROOT:-/}

SOCK=$N/containerd/containerd.sock
PKI=$N/pki
RUN=$N/run
LOG=$N/logs
export KUBECONFIG=${CONTROL_DIR:-$N}/etc/admin.kubeconfig
# the aggregator's TLS certificate, web config, password and config file
METRICS_ETC=$N/etc/metrics
# go builds scripts/k8s/scrape (the in-cluster scrape client) at up
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
# containerd (and so every shim) inherits this PATH: our shim first, then
# containerd-shim-runc-v2 (the default handler, used by the metrics Pod), runc.
export PATH=$N/bin:$CTRD_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

t0=$(date +%s.%N)
el() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b-a}'; }
ts() { printf '[%6ss] %s\n' "$(el)" "$*"; }
die() { echo "node.sh: ERROR: $*" >&2; exit 1; }
kc() { "$K8S_BIN/kubectl" "$@"; }
cri() { "$CRICTL" --config /dev/null --runtime-endpoint "unix://$SOCK" --timeout 30s "$@"; }

# ------------------------------------------------------------------------- PKI
sign() { # sign NAME CN O(or "") EKU SAN(or "")
  local name=$1 cn=$2 o=$3 eku=$4 san=$5 subj="/CN=$2"
  [ -n "$o" ] && subj="/O=$o/CN=$cn"
  openssl genrsa -out "$name.key" 2048 2>/dev/null
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days 30 -sha256 -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
sign_kubelet() { # this node's kubelet certificates, by ca.crt/ca.key in the current dir
  sign kubelet-client "system:node:$NODE_NAME" system:nodes clientAuth ""
  sign kubelet-serving "system:node:$NODE_NAME" system:nodes serverAuth "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1"
}
gen_pki() {
  local want="$NODE_NAME"
  [ -f "$PKI/.done" ] && [ "$(cat "$PKI/.done")" = "$want" ] && return 0
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  (
    cd "$PKI"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -nodes -key ca.key -sha256 -days 30 -subj "/CN=k8s-e2e-ca" -out ca.crt
    sign apiserver kube-apiserver "" serverAuth \
      "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    sign admin admin system:masters clientAuth ""
    sign apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth ""
    sign_kubelet
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    echo "$want" > .done
  )
}
# A second node's kubelet certificates, signed by the control node's CA.
gen_worker_pki() {
  local want; want="$NODE_NAME $(sha256sum < "$CONTROL_DIR/pki/ca.crt")"
  [ -f "$PKI/.done" ] && [ "$(cat "$PKI/.done")" = "$want" ] && return 0
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  (
    cd "$PKI"
    cp "$CONTROL_DIR/pki/ca.crt" "$CONTROL_DIR/pki/ca.key" .
    sign_kubelet
    rm -f ca.key ca.srl
    echo "$want" > .done
  )
}
# The aggregator's server certificate (also for a PKI made before it existed): the
# name contrib/metrics uses, loopback, and the Pod network's gateway, where Pods
# reach it.
gen_metrics_pki() {
  [ -f "$PKI/metrics-server.crt" ] && return 0
  ( cd "$PKI" && sign metrics-server containerd-shim-custom-metrics "" serverAuth \
      "DNS:containerd-shim-custom-metrics,DNS:localhost,IP:127.0.0.1,IP:$POD_GW" )
}
kubeconfig() { # kubeconfig FILE USER CERTNAME
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: k8s-e2e
  cluster: {certificate-authority: $PKI/ca.crt, server: "https://127.0.0.1:$APISERVER_PORT"}
users:
- name: $2
  user: {client-certificate: $PKI/$3.crt, client-key: $PKI/$3.key}
contexts:
- name: $2@k8s-e2e
  context: {cluster: k8s-e2e, user: $2}
current-context: $2@k8s-e2e
EOF
}

# --------------------------------------------------------------------- configs
# containerd's tables for this shim's handlers: none when the installer under
# test (scripts/k8s/cluster.sh) writes them as a drop-in
custom_handlers() {
  [ "$HANDLERS_BY" = installer ] && return 0
  local R='plugins."io.containerd.cri.v1.runtime".containerd.runtimes'
  cat <<EOF
      [$R.$RUNC_HANDLER]
        runtime_type = "io.containerd.custom.v2"
        [$R.$RUNC_HANDLER.options]
          backend = "runc"
          runtime_handler = "$RUNC_HANDLER"
          [$R.$RUNC_HANDLER.options.runc]
            root = "$N/runc"
      [$R.$GVISOR_HANDLER]
        runtime_type = "io.containerd.custom.v2"
        [$R.$GVISOR_HANDLER.options]
          backend = "runsc"
          runtime_handler = "$GVISOR_HANDLER"
          [$R.$GVISOR_HANDLER.options.runsc]
            binary_name = "$RUNSC_BIN"
            root = "$N/runsc"
      # the same backends as pod sandboxes of their own (containerd's Sandbox API):
      # no pause image is pulled, no pause container is created
      [$R.$RUNC_SB_HANDLER]
        runtime_type = "io.containerd.custom.v2"
        sandboxer = "shim"
        disable_pause_image_pull = true
        [$R.$RUNC_SB_HANDLER.options]
          backend = "runc"
          runtime_handler = "$RUNC_SB_HANDLER"
          [$R.$RUNC_SB_HANDLER.options.runc]
            root = "$N/runc"
      # the runc one again with shared shims: up to 10 Pods per shim process
      [$R.$RUNC_POOL_HANDLER]
        runtime_type = "io.containerd.custom.v2"
        sandboxer = "shim"
        disable_pause_image_pull = true
        [$R.$RUNC_POOL_HANDLER.options]
          backend = "runc"
          runtime_handler = "$RUNC_POOL_HANDLER"
          pods_per_shim = 10
          [$R.$RUNC_POOL_HANDLER.options.runc]
            root = "$N/runc"
      # no options table: CRI then sends runc's options type, which a user-namespaced
      # Pod needs (IoUid/IoGid); the shim's settings come from its default config file
      [$R.$USERNS_HANDLER]
        runtime_type = "io.containerd.custom.v2"
      [$R.$USERNS_SB_HANDLER]
        runtime_type = "io.containerd.custom.v2"
        sandboxer = "shim"
        disable_pause_image_pull = true
      [$R.$GVISOR_SB_HANDLER]
        runtime_type = "io.containerd.custom.v2"
        sandboxer = "shim"
        disable_pause_image_pull = true
        [$R.$GVISOR_SB_HANDLER.options]
          backend = "runsc"
          runtime_handler = "$GVISOR_SB_HANDLER"
          [$R.$GVISOR_SB_HANDLER.options.runsc]
            binary_name = "$RUNSC_BIN"
            root = "$N/runsc"
EOF
}

# the shim and the aggregator, and the in-cluster scrape client, when node.sh
# (not the installer) provides them
node_binaries() {
  # a snapshot of the shim (a concurrent `make build` cannot swap it mid-run), replaced
  # atomically and only when it changed: running shims and the aggregator keep theirs
  if ! cmp -s "$SHIM_BIN" "$N/bin/containerd-shim-custom-v2"; then
    install -m 0755 "$SHIM_BIN" "$N/bin/.containerd-shim-custom-v2.new"
    mv -f "$N/bin/.containerd-shim-custom-v2.new" "$N/bin/containerd-shim-custom-v2"
  fi
  if ! cmp -s "$AGG_BIN" "$N/bin/containerd-shim-custom-metrics"; then
    install -m 0755 "$AGG_BIN" "$N/bin/.containerd-shim-custom-metrics.new"
    mv -f "$N/bin/.containerd-shim-custom-metrics.new" "$N/bin/containerd-shim-custom-metrics"
  fi
  # the in-cluster scrape client (and bcrypt hasher), static for the busybox Pod
  ( cd "$root" && CGO_ENABLED=0 "$GO" build -trimpath -o "$N/bin/.scrape.new" ./scripts/k8s/scrape ) ||
    die "cannot build scripts/k8s/scrape"
  mv -f "$N/bin/.scrape.new" "$N/bin/scrape"
}

write_configs() {
  mkdir -p "$N"/{bin,etc,logs,run,containerd,cni/net.d,cni/ipam,kubelet,etcd,pod-logs,volume-plugins,manifests,metrics,runc,runsc}
  chmod 700 "$N/etcd" "$N/metrics"
  [ "$HANDLERS_BY" = installer ] || node_binaries
  local R='plugins."io.containerd.cri.v1.runtime".containerd.runtimes'
  cat > "$N/etc/containerd.toml" <<EOF
version = 3
$([ "$HANDLERS_BY" = installer ] && echo "imports = [\"$N/etc/conf.d/*.toml\"]")
root = "$N/containerd/root"
state = "$N/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$N/containerd/debug.sock"
  level = "info"
[plugins]
  # the default NRI socket may belong to another containerd on this host
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
  [plugins."io.containerd.internal.v1.opt"]
    path = "$N/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    # lowering oom_score_adj is denied on this VM, and CRI's sandboxes ask for -998
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      # containerd's own runc shim: runs the metrics aggregator Pod only
      [$R.runc]
        runtime_type = "io.containerd.runc.v2"
        [$R.runc.options]
          SystemdCgroup = false
$(custom_handlers)
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["$CNI_BIN"]
      conf_dir = "$N/cni/net.d"
      max_conf_num = 1
EOF

  cat > "$N/cni/net.d/10-k8se2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "k8se2e",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$N/cni/ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF

  [ -n "$CONTROL_DIR" ] || kubeconfig "$N/etc/admin.kubeconfig" admin admin
  kubeconfig "$N/etc/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client

  cat > "$N/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
# a second kubelet on this host needs Pod cgroups of its own
cgroupRoot: "${CGROUP_ROOT:-/}"
failSwapOn: false
# the kubelet's own oom_score_adj (default -999): lowering it is denied here
oomScoreAdj: 0
makeIPTablesUtilChains: false
staticPodPath: $N/manifests
fileCheckFrequency: 5s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
clusterDomain: cluster.local
# no DNS server runs: Pods with dnsPolicy ClusterFirst get the cluster's resolv.conf
# (test.sh checks what the runtime gives them)
clusterDNS: [$CLUSTER_DNS]
resolvConf: /etc/resolv.conf
podLogsDir: $N/pod-logs
volumePluginDir: $N/volume-plugins
featureGates:
  PodAndContainerStatsFromCRI: $CRI_STATS
# offline images: never garbage-collect or evict them
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
EOF

  if [ "$HANDLERS_BY" = installer ]; then restart_script; return 0; fi
  # The aggregator serves TLS with basic auth (contrib/metrics' setup) on loopback,
  # for test.sh on the host, and on the Pod network's gateway, for Pods. The
  # password and its hash are made once and kept, so that an unchanged node keeps
  # an unchanged manifest.
  mkdir -p "$METRICS_ETC"; chmod 700 "$METRICS_ETC"
  install -m 0644 "$PKI/ca.crt" "$METRICS_ETC/ca.crt"
  install -m 0644 "$PKI/metrics-server.crt" "$METRICS_ETC/tls.crt"
  install -m 0600 "$PKI/metrics-server.key" "$METRICS_ETC/tls.key"
  if [ ! -s "$METRICS_ETC/password" ] || [ ! -s "$METRICS_ETC/password.bcrypt" ]; then
    ( umask 077; openssl rand -hex 16 > "$METRICS_ETC/password" )
    "$N/bin/scrape" -bcrypt < "$METRICS_ETC/password" > "$METRICS_ETC/password.bcrypt" || die "bcrypt hash failed"
  fi
  cat > "$METRICS_ETC/web-config.yml" <<EOF
tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
basic_auth_users:
  prometheus: '$(cat "$METRICS_ETC/password.bcrypt")'
EOF
  # reloaded on change (test.sh changes it) and on SIGHUP
  cat > "$METRICS_ETC/aggregator.yml" <<'EOF'
scrape_timeout: 2s
const_labels:
  node: ${NODE_NAME}
EOF

  # The shims' metrics aggregator, a static Pod on containerd's runc handler (so it
  # adds nothing to the counters it serves). The image is busybox; the shim binary
  # comes from the host. uid 0 without capabilities: the shims admit uid 0 peers.
  cat > "$N/etc/shim-metrics.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: shim-metrics
  namespace: kube-system
  labels: {app.kubernetes.io/name: containerd-shim-custom-metrics}
spec:
  hostNetwork: true
  hostUsers: true
  priorityClassName: system-node-critical
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 5
  containers:
  - name: metrics-server
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command:
    - /usr/local/bin/containerd-shim-custom-metrics
    - --web.listen-address=127.0.0.1:$METRICS_PORT
    - --web.listen-address=$POD_GW:$METRICS_PORT
    - --web.config.file=$METRICS_ETC/web-config.yml
    - --config.file=$METRICS_ETC/aggregator.yml
    - --shim-socket-dir=$N/metrics/metrics
    - --state-dir=$N/metrics/metrics-final
    - --scrape-timeout=2s
    env:
    - {name: NODE_NAME, value: "$NODE_NAME"}
    resources:
      requests: {cpu: 10m, memory: 32Mi}
      limits: {memory: 256Mi}
    securityContext:
      runAsUser: 0
      runAsGroup: 0
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: ["ALL"]}
    # not httpGet /metrics: every GET scrapes all shims, and the kubelet reads at most
    # 10 KiB of a probe's answer and hangs up (one warning per unsent metric family)
    readinessProbe:
      tcpSocket: {host: 127.0.0.1, port: $METRICS_PORT}
      periodSeconds: 2
    volumeMounts:
    - {name: metrics, mountPath: $N/metrics}
    - {name: metrics-etc, mountPath: $METRICS_ETC, readOnly: true}
    - {name: aggregator, mountPath: /usr/local/bin/containerd-shim-custom-metrics, readOnly: true}
  volumes:
  - name: metrics
    hostPath: {path: $N/metrics, type: Directory}
  - name: metrics-etc
    hostPath: {path: $METRICS_ETC, type: Directory}
  - name: aggregator
    hostPath: {path: $N/bin/containerd-shim-custom-metrics, type: File}
EOF
}

# The installer's RESTART_COMMAND on this node (run in the host's namespaces from
# its Pod): containerd restarted as up starts it, moved first out of the
# installer Pod's cgroups, as systemd would start it in a unit of its own (else
# the Pod's deletion would kill it).
restart_script() {
  cat > "$N/bin/.restart-containerd.new" <<EOF
#!/bin/sh
for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do
  [ -f "\$f" ] && echo \$\$ > "\$f" 2>/dev/null
done
K8S_E2E_DIR='$N' CONTAINERD_VERSION='$CONTAINERD_VERSION' TOOLS_DIR='$tools' HANDLERS_BY=installer \\
  exec bash '$root/scripts/k8s/node.sh' restart-containerd
EOF
  chmod 0755 "$N/bin/.restart-containerd.new"
  mv -f "$N/bin/.restart-containerd.new" "$N/bin/restart-containerd"
}
start_containerd() {
  local conf=()
  if [ "$HANDLERS_BY" != installer ]; then
    # the settings of the handler without options (a node's /etc/containerd/custom-shim.toml)
    printf 'backend = "runc"\nruntime_handler = "%s"\n[runc]\n  root = "%s"\n' "$USERNS_HANDLER" "$N/runc" > "$N/etc/custom-shim.toml"
    conf=(CONTAINERD_SHIM_CUSTOM_CONFIG="$N/etc/custom-shim.toml")
  fi
  start_bg containerd env CONTAINERD_SHIM_CUSTOM_METRICS_DIR="$N/metrics" "${conf[@]}" \
    "$CTRD_BIN/containerd" --config "$N/etc/containerd.toml"
  wait_for containerd 60 "$CTRD_BIN/ctr" -a "$SOCK" version
}

# ------------------------------------------------------------------- processes
pid_of() { [ -f "$RUN/$1.pid" ] && cat "$RUN/$1.pid"; }
alive() { local p; p=$(pid_of "$1") && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
start_bg() { # start_bg NAME CMD...   (own session: its own process group)
  local name=$1; shift
  if alive "$name"; then ts "$name already running (pid $(pid_of "$name"))"; return 0; fi
  setsid "$@" >>"$LOG/$name.log" 2>&1 </dev/null &
  echo $! > "$RUN/$name.pid"
  ts "started $name (pid $!)"
}
wait_for() { # wait_for WHAT TIMEOUT CMD...
  local what=$1 to=$2 end; shift 2
  end=$(( $(date +%s) + to ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timeout ($to s) waiting for $what; see $LOG/"
    sleep 0.2
  done
  ts "$what ready"
}
port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

save_sysctls() { # the kubelet rewrites these (ProtectKernelDefaults=false); down restores them
  [ -f "$RUN/sysctl.orig" ] && return 0
  local s
  for s in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
           kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
    echo "$s=$(sysctl -n "$s")"
  done > "$RUN/sysctl.orig"
}
# paths the kubelet creates whatever its configuration says; down removes the ones up created
HOST_PATHS="/var/log/containers /var/log/pods /var/lib/kubelet /usr/libexec/kubernetes"
save_host_paths() {
  [ -f "$RUN/host-paths.created" ] && return 0
  local d
  for d in $HOST_PATHS; do [ -e "$d" ] || echo "$d"; done > "$RUN/host-paths.created"
}

node_ready_since() { # node_ready_since EPOCH: Ready=True with a heartbeat from this kubelet
  local out st hb
  out=$(kc get node "$NODE_NAME" -o \
    jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}') || return 1
  st=${out%% *}; hb=${out#* }
  [ "$st" = True ] && [ -n "$hb" ] && [ "$(date -d "$hb" +%s)" -ge "$1" ]
}

preflight() {
  [ "$(id -u)" = 0 ] || die "needs root"
  [ -n "$K8S_VERSION" ] && [ -x "$K8S_BIN/kubelet" ] || die "no Kubernetes binaries: run scripts/k8s/build.sh"
  local b
  local need="kubelet kubectl"
  [ -n "$CONTROL_DIR" ] || need="$need etcd kube-apiserver"
  [ "$CONTROLLERS" = 1 ] && need="$need kube-scheduler kube-controller-manager"
  for b in $need; do [ -x "$K8S_BIN/$b" ] || die "missing $K8S_BIN/$b (scripts/k8s/build.sh)"; done
  if [ -n "$CONTROL_DIR" ]; then
    [ -f "$CONTROL_DIR/pki/ca.key" ] || die "no control node in $CONTROL_DIR (node.sh up with K8S_E2E_DIR=$CONTROL_DIR)"
  fi
  [ -x "$CRICTL" ] || die "missing crictl (scripts/k8s/build.sh)"
  [ -x "$CTRD_BIN/containerd" ] || die "missing containerd $CONTAINERD_VERSION in $CTRD_BIN (scripts/deps.sh)"
  [ "$HANDLERS_BY" = installer ] || [ -x "$SHIM_BIN" ] || die "missing $SHIM_BIN (make build)"
  [ -x "$RUNSC_BIN" ] || die "missing $RUNSC_BIN (scripts/deps.sh)"
  [ -x "$CNI_BIN/bridge" ] || die "missing CNI plugins in $CNI_BIN (apt-get install containernetworking-plugins)"
  for b in busybox pause; do [ -f "$IMAGES/$b.tar" ] || die "missing $IMAGES/$b.tar (scripts/k8s/build.sh)"; done
  command -v openssl >/dev/null || die "openssl not found"
  if ! alive containerd; then
    local p
    local ports="$KUBELET_PORT $KUBELET_HEALTHZ_PORT"
    [ -n "$CONTROL_DIR" ] || ports="$ports $ETCD_PORT $ETCD_PEER_PORT $APISERVER_PORT"
    [ "$HANDLERS_BY" = installer ] || ports="$ports $METRICS_PORT"
    for p in $ports; do
      port_free "$p" || die "port 127.0.0.1:$p is in use (another node.sh? set the *_PORT variables)"
    done
  fi
}

control_plane() {
  start_bg etcd "$K8S_BIN/etcd" --name k8s-e2e --data-dir "$N/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "k8s-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --quota-backend-bytes 1073741824 --log-level warn
  wait_for etcd 60 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  start_bg kube-apiserver "$K8S_BIN/kube-apiserver" \
    --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --service-cluster-ip-range=10.96.0.0/24 \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=Hostname \
    --service-account-issuer="https://127.0.0.1:$APISERVER_PORT" --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false
  wait_for kube-apiserver 180 kc get --raw /readyz
  if [ "$CONTROLLERS" = 1 ]; then
    start_bg kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$N/etc/admin.kubeconfig" \
      --authentication-skip-lookup=true --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false
    # node-lifecycle: removes the not-ready taint kubelets register with
    start_bg kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig="$N/etc/admin.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
      --controllers=node-lifecycle-controller,daemonset-controller,job-controller,garbage-collector-controller,serviceaccount-controller,root-ca-certificate-publisher-controller \
      --root-ca-file="$PKI/ca.crt" --use-service-account-credentials=false
  fi
}

up() {
  preflight
  local start; start=$(date +%s.%N)
  if [ -n "$CONTROL_DIR" ]; then gen_worker_pki; else gen_pki; fi
  [ "$HANDLERS_BY" = installer ] || gen_metrics_pki
  write_configs
  ts "PKI and configs in $N (Kubernetes $K8S_VERSION, containerd $CONTAINERD_VERSION, node $NODE_NAME)"
  save_sysctls; save_host_paths

  # The Pod network's bridge, with its gateway address, before the kubelet starts
  # the aggregator, which listens there (the CNI bridge plugin takes it as it is).
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$POD_GW/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up

  start_containerd
  local f
  for f in "$IMAGES/busybox.tar" "$IMAGES/pause.tar"; do
    "$CTRD_BIN/ctr" -a "$SOCK" -n k8s.io images import "$f" >/dev/null 2>>"$LOG/ctr.log" || die "import $f failed (see $LOG/ctr.log)"
  done
  ts "images imported ($BUSYBOX_IMAGE, $PAUSE_IMAGE)"

  [ -n "$CONTROL_DIR" ] || control_plane

  # a second kubelet's Pod cgroups: the kubelet wants its cgroupRoot to exist
  if [ "$CGROUP_ROOT" != / ]; then
    local c
    for c in /sys/fs/cgroup/*/; do
      [ -f "$c/cgroup.procs" ] && mkdir -p "$c${CGROUP_ROOT#/}"
    done
  fi
  # the aggregator's static Pod is in place before the kubelet starts; rewriting an
  # unchanged manifest would make a running kubelet restart the Pod (counters reset)
  [ "$HANDLERS_BY" = installer ] || cmp -s "$N/etc/shim-metrics.yaml" "$N/manifests/shim-metrics.yaml" ||
    install -m 0644 "$N/etc/shim-metrics.yaml" "$N/manifests/shim-metrics.yaml"
  local kstart
  start_bg kubelet "$K8S_BIN/kubelet" --config="$N/etc/kubelet.yaml" \
    --kubeconfig="$N/etc/kubelet.kubeconfig" --root-dir="$N/kubelet" \
    --hostname-override="$NODE_NAME" --v=2
  # Ready with a heartbeat from this kubelet: after a restart the Node object still
  # says Ready=True from the previous one (no node-lifecycle controller here)
  kstart=$(( $(stat -c %Y "$RUN/kubelet.pid") - 1 ))
  wait_for "node $NODE_NAME Ready" 180 node_ready_since "$kstart"
  local ready_s; ready_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')

  if [ -n "$CONTROL_DIR" ] || [ "$HANDLERS_BY" = installer ]; then
    printf 'node_ready_seconds=%s\n' "$ready_s" > "$RUN/startup"
    ts "node $NODE_NAME up: Ready ${ready_s}s after up started"
    return 0
  fi
  # a RuntimeClass per handler, and what the absent controller-manager would create:
  # the default ServiceAccount, kube-root-ca.crt
  local classes=("$RUNC_HANDLER" "$GVISOR_HANDLER" "$RUNC_SB_HANDLER" "$GVISOR_SB_HANDLER" "$RUNC_POOL_HANDLER" "$USERNS_HANDLER" "$USERNS_SB_HANDLER") h
  { for h in "${classes[@]}"; do printf 'apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: %s}\nhandler: %s\n---\n' "$h" "$h"; done
    printf 'apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: default}\n'; } | kc apply -f - >/dev/null
  kc -n default create configmap kube-root-ca.crt --from-file=ca.crt="$PKI/ca.crt" \
    --dry-run=client -o yaml | kc apply -f - >/dev/null
  ts "RuntimeClasses ${classes[*]}, default ServiceAccount, kube-root-ca.crt"

  wait_for "metrics aggregator (static Pod) on https://127.0.0.1:$METRICS_PORT, TLS + basic auth" 120 \
    curl -sf --cacert "$METRICS_ETC/ca.crt" -u "prometheus:$(cat "$METRICS_ETC/password")" \
    "https://127.0.0.1:$METRICS_PORT/metrics"
  local total; total=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  printf 'node_ready_seconds=%s\nup_seconds=%s\n' "$ready_s" "$total" > "$RUN/startup"
  ts "node up: Ready ${ready_s}s after up started, everything (aggregator included) in ${total}s"
  echo "  eval \"\$($0 env)\"; kubectl get nodes"
}

stop_one() { # stop_one NAME [TIMEOUT]: SIGTERM by recorded pid, SIGKILL after TIMEOUT
  local name=$1 to=${2:-30} p end
  p=$(pid_of "$name") || return 0
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p"
    end=$(( $(date +%s) + to ))
    while kill -0 "$p" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then echo "$name ($p) still alive: SIGKILL"; kill -KILL "$p"; fi
    ts "stopped $name ($p)"
  fi
  rm -f "$RUN/$name.pid"
}

# processes of this node only: found by this state dir on their command line
our_pids() { # our_pids PATTERN: pids whose command line has PATTERN and this node's paths
  local pid cmd
  for pid in $(pgrep -f -- "$1" 2>/dev/null); do
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || continue
    case "$cmd" in *"$N/"*) echo "$pid" ;; esac
  done
}
# the runc backend's sandbox holders (pods on $RUNC_SB_HANDLER) have no path on their
# command line ("containerd-shim-custom-v2 sandbox-holder ..."): they are this node's
# when they run its copy of the shim (replaced or not: "... (deleted)")
our_holders() {
  local pid exe
  for pid in $(pgrep -f -- '^containerd-shim-custom-v2 sandbox-holder' 2>/dev/null); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    case "$exe" in "$N/bin/containerd-shim-custom-v2"*) echo "$pid" ;; esac
  done
}

down() {
  [ -d "$N" ] || { ts "nothing to stop ($N absent)"; return 0; }
  # 1. Pods away through the API while the kubelet runs (clean sandbox teardown);
  #    the static Pod by removing its manifest.
  if alive kubelet && kc get --raw /readyz >/dev/null 2>&1; then
    kc delete pods -n default --field-selector "spec.nodeName=$NODE_NAME" --grace-period=2 --timeout=60s >/dev/null 2>&1 || true
    rm -f "$N/manifests/shim-metrics.yaml"
    local end=$(( $(date +%s) + 60 ))
    while [ -n "$(cri pods --state ready -q 2>/dev/null)" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 0.5; done
    ts "Pods deleted"
  fi
  stop_one kubelet
  # 2. whatever is left in containerd
  if alive containerd; then
    local p
    for p in $(cri pods -q 2>/dev/null); do
      cri stopp "$p" >/dev/null 2>&1 || true
      cri rmp -f "$p" >/dev/null 2>&1 || true
    done
  fi
  stop_one kube-controller-manager
  stop_one kube-scheduler
  stop_one kube-apiserver
  stop_one etcd
  stop_one containerd
  # 3. shims and gVisor sandboxes left behind (a crash, a timeout): this node's only
  local left
  left=$(our_pids 'containerd-shim-' ; our_pids 'runsc'; our_holders)
  if [ -n "$left" ]; then
    echo "leftover processes: $(echo $left)"; kill -KILL $left 2>/dev/null || true
  fi
  # 4. the kubelet's (now empty) cgroups - unless another kubelet uses them - and the bridge
  if [ "$CGROUP_ROOT" != / ]; then
    for c in /sys/fs/cgroup/*/"${CGROUP_ROOT#/}"; do
      [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
  elif ! pgrep -x kubelet >/dev/null; then
    for c in /sys/fs/cgroup/*/kubepods; do
      [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
  fi
  ip link del "$BRIDGE" 2>/dev/null || true
  # 5. sysctls, kubelet host directories
  if [ -f "$RUN/sysctl.orig" ]; then
    while IFS= read -r kv; do sysctl -qw "$kv" || true; done < "$RUN/sysctl.orig"
    rm -f "$RUN/sysctl.orig"
  fi
  if [ -f "$RUN/host-paths.created" ]; then
    while IFS= read -r d; do [ -n "$d" ] && rm -rf "$d"; done < "$RUN/host-paths.created"
    rm -f "$RUN/host-paths.created"
  fi
  # 6. mounts left under the state dir (deepest first)
  { grep " $N/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  ts "down"
}

status() {
  local n
  for n in containerd etcd kube-apiserver kube-scheduler kube-controller-manager kubelet; do
    if alive "$n"; then echo "$n: running (pid $(pid_of "$n"))"; else echo "$n: stopped"; fi
  done
  [ -f "$RUN/startup" ] && cat "$RUN/startup"
  if alive kube-apiserver; then kc get nodes -o wide; kc get pods -A -o wide; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  test) shift; exec "$root/scripts/k8s/test.sh" "$@" ;;
  clean) down; rm -rf "$N"; ts "removed $N" ;;
  # internal: $N/bin/restart-containerd (HANDLERS_BY=installer) runs it
  restart-containerd) stop_one containerd; start_containerd ;;
  env)
    echo "export KUBECONFIG=$KUBECONFIG"
    echo "export PATH=$K8S_BIN:$(dirname "$CRICTL"):$CTRD_BIN:\$PATH"
    echo "export CONTAINER_RUNTIME_ENDPOINT=unix://$SOCK"
    echo "export CONTAINERD_ADDRESS=$SOCK CONTAINERD_NAMESPACE=k8s.io"
    ;;
  # internal: the resolved settings, for test.sh
  vars)
    for v in N K8S_VERSION K8S_BIN CTRD_BIN CRICTL SOCK PKI RUN LOG NODE_NAME KUBELET_PORT METRICS_PORT METRICS_ETC POD_GW \
             BUSYBOX_IMAGE CRI_STATS RUNSC_BIN RUNC_HANDLER GVISOR_HANDLER RUNC_SB_HANDLER GVISOR_SB_HANDLER RUNC_POOL_HANDLER USERNS_HANDLER USERNS_SB_HANDLER CLUSTER_DNS; do
      printf '%s=%q\n' "$v" "${!v}"
    done ;;
  *) echo "usage: $0 up|down|test|env|status|clean" >&2; exit 2 ;;
esac

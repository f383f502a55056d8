#!/usr/bin/env bash
# test.sh - end-to-end checks of containerd-shim-custom-v2 on the node that
# scripts/k8s/node.sh up started, for each RuntimeClass handler
# (default: node.sh's $RUNC_HANDLER $GVISOR_HANDLER $RUNC_SB_HANDLER $GVISOR_SB_HANDLER
# $RUNC_POOL_HANDLER, i.e. custom-runc custom-runsc on the pause path, custom-runc-sb
# custom-runsc-sb on containerd's Sandbox API (sandboxer = 'shim', no pause
# container), and custom-runc-pool, custom-runc-sb sharing shims (pods_per_shim =
# 10: a Pod's shim is found by its pool group); a subset with HANDLERS="...").
#
# Per handler:
#   run        a Pod with runtimeClassName=<handler> reaches Running, on the
#              handler, in a containerd-shim-custom-v2 process
#   no-pause   (sandboxed handlers) containerd's store holds the Pod's containers
#              and nothing else: no container with the sandbox's id, no pause image
#   holder     (runc sandboxed handler) one sandbox-holder process for the Pod, in
#              <pod cgroup>/<sandbox id> as pause would be, whose network, UTS and
#              IPC namespaces are the container's
#   hostname   the Pod's hostname (= its name) in the container: hostname,
#              /etc/hostname, the kubelet's /etc/hosts
#   dns        /etc/resolv.conf from the cluster DNS config (dnsPolicy ClusterFirst:
#              the kubelet's clusterDNS, the namespace's search path, ndots:5)
#   logs       kubectl logs
#   checkpoint (runc handlers) the kubelet's checkpoint API on the running container:
#              where CRIU works, an archive with checkpoint/inventory.img, spec.dump and
#              config.dump; where it cannot, HTTP 500 naming CRIU's version, the kernel and
#              the fix; the Pod keeps running; kubelet_runtime_operations_total{operation_type=
#              "checkpoint_container"} rises (its errors too, when it failed)
#   exec       kubectl exec: output and exit code; stdin round trip
#   one-shim   a two-container Pod runs in one shim process (processes whose
#              command line carries the Pod's sandbox id); gVisor: one
#              runsc-sandbox process for the Pod
#   shm        the two containers share /dev/shm (the Pod's IPC)
#   oom        a container over its memory limit ends with reason OOMKilled
#   liveness   a failing exec liveness probe restarts the container (restartCount 1)
#   stats      the kubelet's /stats/summary has each container's CPU and memory
#   cri-stats  crictl stats (CRI ContainerStats -> the shim's Stats) for each container
#   pod-stats  the Pods' own CPU and memory: /stats/summary, and crictl statsp (CRI
#              PodSandboxStats: containerd reads the pod cgroup on the pause path,
#              asks the shim's SandboxMetrics on a sandboxed handler)
#   delete     kubectl delete --wait of the handler's Pods
#   cleanup-*  then: no shim or runsc process, no mount under the containerd state
#              dir, no cgroup for the Pods; (sandboxed handlers) no sandbox-holder
#              process of this node left
# Once, before (as [aggregator]):
#   metrics-tls-*   a Pod on the Pod network (default handler) scrapes the aggregator
#              over TLS with basic auth, as an in-cluster Prometheus would: 200 with
#              the password; 401 with a wrong one; no connection without the CA;
#              no metrics in plain HTTP
#   metrics-reload  a change of the aggregator's config file (a constant label) is
#              in force within seconds, a bad one is refused (last_reload_successful
#              0, the old one stays), and the aggregator did not restart
#   metrics-*  the aggregator's counters for the handler moved by what this test
#              did: tasks_created_total (pause path: sandboxes + container starts,
#              restarts included; sandboxed handlers: container starts, the sandbox
#              is no task), tasks_exited_total{reason="oom_killed"} (the kernel's OOM
#              victims: on gVisor the host kills the Pod's sentry, so the sandbox
#              and its container both end, the sandbox as a task on the pause path),
#              all exits, deletes
#   metrics-sb-*  the Sandbox API's families: sandboxes_created_total,
#              _started_total, _exited_total{reason} (stopped; died: the OOM-killed
#              gVisor sandbox), _shutdown_total and sandbox_start_latency_seconds'
#              count, one per sandbox on a sandboxed handler, none on the pause path
# Then, on $USERNS_HANDLER and $USERNS_SB_HANDLER (node.sh: the runc backend with no
# options table, pause path and Sandbox API), with shareProcessNamespace:
#   userns     a Pod with hostUsers: false reaches Running (kubelet admits it from the
#              handler's features); one mapping of 65536 ids, container root on a host
#              id other than 0, the container's init runs as that host uid, a file it
#              writes to an emptyDir is root's inside and on the host (the volume
#              is idmapped, as kubelet asks)
#   userns-delete  the Pod deleted, its sandbox gone
# Prints PASS/FAIL per check and a summary; exits 1 if any check failed.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
eval "$("$here/node.sh" vars)" || exit 2
export KUBECONFIG=$N/etc/admin.kubeconfig
HANDLERS=${HANDLERS:-$RUNC_HANDLER $GVISOR_HANDLER $RUNC_SB_HANDLER $GVISOR_SB_HANDLER $RUNC_POOL_HANDLER}
TIMEOUT=${TIMEOUT:-120}
IMG=$BUSYBOX_IMAGE

kc() { "$K8S_BIN/kubectl" "$@"; }
ctr() { "$CTRD_BIN/ctr" -a "$SOCK" -n k8s.io "$@"; }
is_gvisor() { [ "$1" = "$GVISOR_HANDLER" ] || [ "$1" = "$GVISOR_SB_HANDLER" ]; }
is_sb() { [ "$1" = "$RUNC_SB_HANDLER" ] || [ "$1" = "$GVISOR_SB_HANDLER" ] || [ "$1" = "$RUNC_POOL_HANDLER" ]; }
is_runc_sb() { [ "$1" = "$RUNC_SB_HANDLER" ] || [ "$1" = "$RUNC_POOL_HANDLER" ]; } # sandboxes are holders
cri() { "$CRICTL" --config /dev/null --runtime-endpoint "unix://$SOCK" --timeout 30s "$@"; }
kubelet_get() { # straight to the kubelet (the apiserver will not proxy to a loopback node)
  curl -sf --max-time 20 --cacert "$PKI/ca.crt" --cert "$PKI/apiserver-kubelet-client.crt" \
    --key "$PKI/apiserver-kubelet-client.key" "https://127.0.0.1:$KUBELET_PORT$1"
}
# the aggregator serves TLS with basic auth (node.sh: contrib/metrics' setup)
metrics() {
  curl -sf --max-time 20 --cacert "$METRICS_ETC/ca.crt" -u "prometheus:$(cat "$METRICS_ETC/password")" \
    "https://127.0.0.1:$METRICS_PORT/metrics"
}
agg_start() { printf '%s\n' "$1" | awk '$1 ~ /^process_start_time_seconds($|\{)/ {print $2}'; }
# msum TEXT FAMILY HANDLER [LABEL-MATCH [FORMAT]]: sum of the family's series for the handler
msum() {
  printf '%s\n' "$1" | grep -E "^containerd_shim_custom_$2\{" | grep -F "runtime_handler=\"$3\"" |
    { if [ -n "${4:-}" ]; then grep -F "$4"; else cat; fi; } | awk -v f="${5:-%d}" '{s += $NF} END {printf f, s}'
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

declare -a RESULTS=() HTIMES=()
fails=0
H=
last_check=$(now)
check() { # check NAME OK(0/1) DETAIL: the time shown is since the previous check
  local dt; dt=$(since "$last_check"); last_check=$(now)
  if [ "$2" = 0 ]; then echo "PASS [$H] $1 (${dt}s): $3"; RESULTS+=("$H $1 PASS:${dt}s")
  else echo "FAIL [$H] $1 (${dt}s): $3"; RESULTS+=("$H $1 FAIL:${dt}s"); fails=$((fails + 1)); fi
}
until_true() { # until_true TIMEOUT CMD...: retry every second
  local end=$(( $(date +%s) + $1 )); shift
  until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 1; done
}

podspec() { # podspec NAME HANDLER RESTART [DNSPOLICY]  (containers follow on stdin)
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default, labels: {e2e: shim}}
spec:
  nodeName: $NODE_NAME
  runtimeClassName: $2
  restartPolicy: $3
  terminationGracePeriodSeconds: 2
  dnsPolicy: ${4:-Default}
  automountServiceAccountToken: false
  enableServiceLinks: false
EOF
  cat
}
uid_of() { kc get pod "$1" -o jsonpath='{.metadata.uid}'; }
sandboxes_of() { cri pods --label "io.kubernetes.pod.uid=$1" -q; }           # all, newest first
containers_of() { local s; for s in $(sandboxes_of "$1"); do cri ps -a --pod "$s" -q; done; }
# shims_with ID: the shim serving ID: started with -id ID, or, with pods_per_shim,
# serving ID's pool group (the pool's index: "<pool> <group>", README)
shims_with() {
  local g=""; [ -r "/run/containerd/custom/pools/pods/k8s.io/$1" ] && g=$(awk '{print $2}' "/run/containerd/custom/pools/pods/k8s.io/$1")
  ps -eo pid=,args= | awk -v id="$1" -v g="$g" '$2 ~ /containerd-shim-custom-v2$/ && (index($0 " ", " " id " ") || (g != "" && index($0 " ", " -group " g " "))) {print $1}'
}
sandbox_procs_with() { ps -eo pid=,args= | awk -v id="$1" '$2 == "runsc-sandbox" && index($0, id) {print $1}'; }
runsc_procs_with() { ps -eo pid=,args= | awk -v id="$1" '$2 ~ /runsc/ && index($0, id) {print $1}'; }
# the runc backend's sandbox holders of this node (they run its copy of the shim);
# their command line has no id: a Pod's is the one in the cgroup named for its sandbox
holders() {
  local pid exe
  for pid in $(pgrep -f -- '^containerd-shim-custom-v2 sandbox-holder' 2>/dev/null); do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    case "$exe" in "$N/bin/containerd-shim-custom-v2"*) echo "$pid" ;; esac
  done
}
holders_with() { local pid; for pid in $(holders); do grep -qF "/$1" "/proc/$pid/cgroup" 2>/dev/null && echo "$pid"; done; }
pid_start() { awk '{sub(/.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null; }

echo "== node: Kubernetes $K8S_VERSION, node $NODE_NAME, state $N"
[ -f "$RUN/startup" ] && sed 's/^/   /' "$RUN/startup"
kc get node "$NODE_NAME" -o wide --no-headers || { echo "node not reachable: run scripts/k8s/node.sh up"; exit 2; }
echo "   shim: $(sha256sum < "$N/bin/containerd-shim-custom-v2" | cut -c1-16) version $("$N/bin/containerd-shim-custom-v2" --version 2>&1 | awk '/Version:/ {print $2}')"
# leftovers of an interrupted run
kc delete pods -l e2e=shim --grace-period=1 --wait=true --timeout=120s >/dev/null 2>&1

test_start=$(now)

# ---- the aggregator from inside the cluster network, over TLS with auth -------------------
H=aggregator; astart=$(now); last_check=$astart
echo
echo "== $H: https://$POD_GW:$METRICS_PORT from a Pod, TLS + basic auth"
kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: metrics-scrape, namespace: default, labels: {e2e: shim}}
spec:
  nodeName: $NODE_NAME
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  enableServiceLinks: false
  containers:
  - name: prometheus
    image: $IMG
    imagePullPolicy: Never
    command: [sleep, "3600"]
    volumeMounts:
    - {name: scrape, mountPath: /scrape, readOnly: true}
    - {name: ca, mountPath: /m/ca.crt, readOnly: true}
    - {name: password, mountPath: /m/password, readOnly: true}
  volumes:
  - {name: scrape, hostPath: {path: $N/bin/scrape, type: File}}
  - {name: ca, hostPath: {path: $METRICS_ETC/ca.crt, type: File}}
  - {name: password, hostPath: {path: $METRICS_ETC/password, type: File}}
EOF
if kc wait --for=condition=Ready pod/metrics-scrape --timeout="${TIMEOUT}s" >/dev/null; then
  url=https://$POD_GW:$METRICS_PORT/metrics
  pod_ip=$(kc get pod metrics-scrape -o jsonpath='{.status.podIP}')
  pscrape() { kc exec metrics-scrape -- /scrape "$@"; } # body on stdout, "HTTP n" on stderr
  out=$(pscrape -cacert /m/ca.crt -user prometheus -password-file /m/password "$url" 2>/tmp/k8s-e2e-scrape.err); rc=$?
  check metrics-tls-pod "$([ "$rc" = 0 ] && grep -q "^containerd_shim_custom_aggregator_build_info{.*node=\"$NODE_NAME\"" <<<"$out" && echo 0 || echo 1)" \
    "Pod $pod_ip -> $url with the CA and the password: rc=$rc, $(tr '\n' ' ' < /tmp/k8s-e2e-scrape.err)$(printf '%s\n' "$out" | grep -c '^containerd_shim_custom_') series"
  out=$(kc exec metrics-scrape -- sh -c "echo wrong > /tmp/pw; /scrape -cacert /m/ca.crt -user prometheus -password-file /tmp/pw $url" 2>&1); rc=$?
  check metrics-tls-401 "$(grep -q '^HTTP 401' <<<"$out" && ! grep -q '^containerd_shim_custom' <<<"$out" && echo 0 || echo 1)" \
    "wrong password: rc=$rc, $(printf '%s' "$out" | grep '^HTTP' || printf '%s' "$out" | head -c 200)"
  out=$(kc exec metrics-scrape -- sh -c "/scrape -cacert /m/ca.crt $url" 2>&1); rc=$?
  check metrics-tls-noauth "$(grep -q '^HTTP 401' <<<"$out" && echo 0 || echo 1)" "no credentials: rc=$rc, $(printf '%s' "$out" | grep '^HTTP')"
  out=$(pscrape -user prometheus -password-file /m/password "$url" 2>&1); rc=$?
  check metrics-tls-ca "$([ "$rc" = 1 ] && grep -q 'certificate' <<<"$out" && echo 0 || echo 1)" \
    "without the CA: rc=$rc, $(printf '%s' "$out" | head -c 200)"
  out=$(pscrape -user prometheus -password-file /m/password "http://$POD_GW:$METRICS_PORT/metrics" 2>&1); rc=$?
  check metrics-tls-plain "$([ "$rc" != 0 ] && ! grep -q '^containerd_shim_custom' <<<"$out" && echo 0 || echo 1)" \
    "plain HTTP to the TLS port: rc=$rc, $(printf '%s' "$out" | grep '^HTTP' || printf '%s' "$out" | head -c 200)"

  # A configuration change while it runs: applied (fsnotify), a bad one refused.
  m0=$(metrics); s0=$(agg_start "$m0")
  cp "$METRICS_ETC/aggregator.yml" "$METRICS_ETC/aggregator.yml.orig"
  printf 'scrape_timeout: 2s\nconst_labels:\n  node: ${NODE_NAME}\n  cluster: k8s-e2e\n' > "$METRICS_ETC/aggregator.yml.new"
  mv "$METRICS_ETC/aggregator.yml.new" "$METRICS_ETC/aggregator.yml"
  # (captured, then grepped: grep -q ending a pipe early fails it under pipefail)
  reloaded() { local o; o=$(pscrape -cacert /m/ca.crt -user prometheus -password-file /m/password "$url" 2>/dev/null); grep -q 'cluster="k8s-e2e"' <<<"$o"; }
  t_r=$(now); until_true 20 reloaded; ok=$?; t_r=$(since "$t_r")
  printf 'scrape_timeout: 2s\nconst_labels:\n  pod: not-allowed\n' > "$METRICS_ETC/aggregator.yml.new"
  mv "$METRICS_ETC/aggregator.yml.new" "$METRICS_ETC/aggregator.yml"
  refused() { local o; o=$(metrics); grep -q '^containerd_shim_custom_aggregator_config_last_reload_successful{.*} 0$' <<<"$o"; }
  until_true 20 refused; bad=$?
  m1=$(metrics); s1=$(agg_start "$m1")
  still=$(printf '%s\n' "$m1" | grep -c 'cluster="k8s-e2e"')
  mv "$METRICS_ETC/aggregator.yml.orig" "$METRICS_ETC/aggregator.yml"
  check metrics-reload "$([ "$ok" = 0 ] && [ "$bad" = 0 ] && [ "$still" -gt 0 ] && [ -n "$s0" ] && [ "$s0" = "$s1" ] && echo 0 || echo 1)" \
    "label added by a config change in force after ${t_r}s (ok=$ok); bad file refused (last_reload_successful 0: $bad), old labels kept on $still series; same aggregator ($s0 = $s1)"
  restored() { local o; o=$(metrics); grep -q '^containerd_shim_custom_aggregator_config_last_reload_successful{.*} 1$' <<<"$o"; }
  until_true 20 restored ||
    echo "   (the restored config was not reloaded yet)"
else
  check metrics-tls-pod 1 "Pod metrics-scrape not Ready: $(kc get pod metrics-scrape -o wide --no-headers 2>&1)"
fi
kc delete pod metrics-scrape --grace-period=1 --wait=true --timeout=60s >/dev/null 2>&1
HTIMES+=("$H $(since "$astart")s")

for H in $HANDLERS; do
  p=${H#custom-}
  hstart=$(now); last_check=$hstart
  echo
  echo "== $H"
  m0=$(metrics) || { check metrics-scrape 1 "aggregator on 127.0.0.1:$METRICS_PORT not answering"; continue; }
  agg_start0=$(agg_start "$m0")
  created0=$(msum "$m0" tasks_created_total "$H")
  exited0=$(msum "$m0" tasks_exited_total "$H")
  oom0=$(msum "$m0" tasks_exited_total "$H" 'reason="oom_killed"')
  deleted0=$(msum "$m0" tasks_deleted_total "$H")
  execs0=$(msum "$m0" execs_started_total "$H")
  sbc0=$(msum "$m0" sandboxes_created_total "$H"); sbs0=$(msum "$m0" sandboxes_started_total "$H")
  sbe0=$(msum "$m0" sandboxes_exited_total "$H"); sbd0=$(msum "$m0" sandboxes_exited_total "$H" 'reason="died"')
  sbsh0=$(msum "$m0" sandboxes_shutdown_total "$H")
  sbl0=$(msum "$m0" sandbox_start_latency_seconds_count "$H"); sbls0=$(msum "$m0" sandbox_start_latency_seconds_sum "$H" "" %.6f)
  kexecs=0
  pods=()

  # ---- run: one long-running Pod -------------------------------------------------
  main=$p-main; pods+=("$main")
  s=$(now)
  # (the cluster's DNS config: the dns check below)
  podspec "$main" "$H" Always ClusterFirst <<EOF | kc apply -f - >/dev/null
  containers:
  - name: main
    image: $IMG
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello-from-$H; i=0; while true; do i=\$((i+1)); echo tick \$i; x=0; while [ \$x -lt 3000 ]; do x=\$((x+1)); done; sleep 1; done"]
    resources:
      requests: {cpu: 100m, memory: 32Mi}
      limits: {cpu: 500m, memory: 64Mi}
EOF
  if kc wait --for=condition=Ready "pod/$main" --timeout="${TIMEOUT}s" >/dev/null 2>&1; then
    sb=$(sandboxes_of "$(uid_of "$main")" | head -1)
    rh=$(cri inspectp -o go-template --template '{{.status.runtimeHandler}}' "$sb" 2>/dev/null)
    shim=$(shims_with "$sb")
    exe=$(readlink "/proc/${shim:-0}/exe" 2>/dev/null)
    ok=1; [ "$rh" = "$H" ] && [ -n "$shim" ] && [ "${exe##*/}" = containerd-shim-custom-v2 ] && ok=0
    check run $ok "Running in $(since "$s")s, sandbox ${sb:0:13} handler=$rh shim pid=${shim:-none} exe=$exe"
  else
    check run 1 "not Ready after ${TIMEOUT}s: $(kc get pod "$main" --no-headers 2>&1); $(kc get events --field-selector involvedObject.name="$main" -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' | tail -3)"
  fi
  muid=$(uid_of "$main"); msb=$(sandboxes_of "$muid" | head -1); mcid=$(containers_of "$muid" | head -1)
  # what the Pod costs besides its container (figures, not a check): the shim, and
  # the processes in the sandbox's own cgroup (pause; the holder; gVisor's sandbox)
  if [ -n "$msb" ]; then
    sbp=$(grep -l -E ":memory:.*/$msb\$" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3 | tr '\n' ' ')
    pss() { local p k t=0; for p in "$@"; do k=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null); t=$((t + ${k:-0})); done; echo "$t"; }
    echo "   footprint: shim ${shim:-?} PSS $(awk -v k="$(pss ${shim:-})" 'BEGIN{printf "%.1f", k/1024}') MiB; sandbox cgroup processes ($(for q in $sbp; do printf '%s ' "$(tr '\0' ' ' < /proc/$q/cmdline 2>/dev/null | cut -c1-40)"; done| sed 's/ $//')) PSS $(awk -v k="$(pss $sbp)" 'BEGIN{printf "%.1f", k/1024}') MiB"
  fi

  # ---- sandboxed handlers: no pause container, the runc backend's holder ---------------
  if is_sb "$H"; then
    # everything containerd's store holds for the Pod: its one container, nothing with
    # the sandbox's id, nothing from the pause image
    store=$(ctr containers ls "labels.\"io.kubernetes.pod.uid\"==$muid" 2>/dev/null | awk 'NR > 1 {print $1 "=" $2}')
    all=$(ctr containers ls -q 2>/dev/null)
    ok=1
    [ -n "$msb" ] && [ "$(echo $store | wc -w)" = 1 ] && [ "${store%%=*}" = "$mcid" ] &&
      ! grep -qxF "$msb" <<<"$all" && ! grep -q pause <<<"$store" && ok=0
    check no-pause $ok "containerd's store for the Pod: $(echo ${store:-nothing} | sed "s/\([0-9a-f]\{13\}\)[0-9a-f]*/\1/g") (its container: ${mcid:0:13}); sandbox ${msb:0:13} in the store: $(grep -qxF "$msb" <<<"$all" && echo YES || echo no); $(echo $all | wc -w) containers in k8s.io"
  fi
  if is_runc_sb "$H"; then
    hp=$(holders_with "$msb"); cpid=$(cri inspect -o go-template --template '{{.info.pid}}' "$mcid" 2>/dev/null)
    ns_same=""; ok=1
    if [ "$(echo $hp | wc -w)" = 1 ] && [ -n "$cpid" ]; then
      for t in net uts ipc; do
        [ "$(readlink "/proc/$hp/ns/$t")" = "$(readlink "/proc/$cpid/ns/$t")" ] && ns_same="$ns_same $t" || ns_same="$ns_same $t:DIFFERENT"
      done
      hcg=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' "/proc/$hp/cgroup")
      case "$hcg" in */pod"$muid"/"$msb"|*/pod"${muid//-/_}"/"$msb") case "$ns_same" in *DIFFERENT*) ;; *) ok=0 ;; esac ;; esac
    fi
    check holder $ok "$(echo $hp | wc -w) sandbox-holder(s) for sandbox ${msb:0:13} (pid ${hp:-none}: $(tr '\0' ' ' < "/proc/${hp:-0}/cmdline" 2>/dev/null)), memory cgroup ${hcg:-?}; namespaces shared with the container (pid ${cpid:-?}):${ns_same:- none}"
  fi

  # ---- the Pod's hostname and DNS config -----------------------------------------------
  out=$(kc exec "$main" -- sh -c 'echo "$(hostname) $(cat /etc/hostname)"; cat /etc/hosts' 2>&1)
  kexecs=$((kexecs + 1))
  ip=$(kc get pod "$main" -o jsonpath='{.status.podIP}')
  ok=1; [ "$(head -1 <<<"$out")" = "$main $main" ] && grep -qE "^$ip[[:space:]]+$main\$" <<<"$out" && ok=0
  check hostname $ok "hostname, /etc/hostname: '$(head -1 <<<"$out")' (want '$main $main'); /etc/hosts: '$(grep -E "[[:space:]]$main\$" <<<"$out" | tr '\t' ' ')' (pod IP $ip)"
  out=$(kc exec "$main" -- cat /etc/resolv.conf 2>&1)
  kexecs=$((kexecs + 1))
  ok=1
  grep -qx "nameserver $CLUSTER_DNS" <<<"$out" && grep -qE '^search default\.svc\.cluster\.local svc\.cluster\.local cluster\.local( |$)' <<<"$out" &&
    grep -qE '^options .*ndots:5' <<<"$out" && ! grep -v "^nameserver $CLUSTER_DNS\$" <<<"$out" | grep -q '^nameserver' && ok=0
  check dns $ok "/etc/resolv.conf: $(tr '\n' '|' <<<"$out")"

  # ---- logs -----------------------------------------------------------------------
  until_true 20 sh -c "'$K8S_BIN/kubectl' logs '$main' 2>/dev/null | grep -q 'tick 2'"
  out=$(kc logs "$main" --tail=100 2>&1)
  ok=1; printf '%s\n' "$out" | grep -qx "hello-from-$H" && printf '%s\n' "$out" | grep -q 'tick 2' && ok=0
  check logs $ok "$(printf '%s\n' "$out" | head -3 | tr '\n' '|')"

  # ---- the kubelet's checkpoint API (ContainerCheckpoint) on runc ---------------------
  # where CRIU works: an archive with CRIU's images; where it cannot (CRIU < 4.1 on a
  # kernel >= 6.13, this machine): an error naming CRIU's version and the kernel. Either
  # way the container keeps running and kubelet counts the operation.
  if ! is_gvisor "$H"; then
    ops() { kubelet_get /metrics | awk -v f="$1" '$1 ~ "^"f"\\{" && $1 ~ /operation_type="checkpoint_container"/ {s += $2} END {print s + 0}'; }
    tot0=$(ops kubelet_runtime_operations_total); err0=$(ops kubelet_runtime_operations_errors_total)
    resp=$(curl -s -X POST --max-time 180 --cacert "$PKI/ca.crt" --cert "$PKI/apiserver-kubelet-client.crt" \
      --key "$PKI/apiserver-kubelet-client.key" -w '\nHTTP %{http_code}' \
      "https://127.0.0.1:$KUBELET_PORT/checkpoint/default/$main/main?timeout=120" 2>&1)
    code=${resp##*HTTP }; body=${resp%$'\n'HTTP*}
    tot=$(( $(ops kubelet_runtime_operations_total) - tot0 )); errs=$(( $(ops kubelet_runtime_operations_errors_total) - err0 ))
    phase=$(kc get pod "$main" -o jsonpath='{.status.phase}')
    ok=1
    if criu check >/dev/null 2>&1; then
      archive=$(sed -n 's/.*"items":\["\([^"]*\)".*/\1/p' <<<"$body")
      listing=$(tar -tf "$archive" 2>/dev/null | tr '\n' ' ')
      [ "$code" = 200 ] && [ "$tot" -ge 1 ] && [ "$errs" = 0 ] && [ "$phase" = Running ] &&
        grep -q 'checkpoint/inventory.img' <<<"$listing" && grep -q 'spec.dump' <<<"$listing" && grep -q 'config.dump' <<<"$listing" && ok=0
      check checkpoint $ok "HTTP $code, archive $archive ($(wc -w <<<"$listing") entries: inventory.img, spec.dump, config.dump present: $( { grep -q checkpoint/inventory.img <<<"$listing" && grep -q spec.dump <<<"$listing" && grep -q config.dump <<<"$listing"; } && echo yes || echo NO)); checkpoint_container operations +$tot, errors +$errs; Pod $phase"
      rm -f "$archive"
    else
      v=$(criu --version 2>/dev/null | awk '/^Version:/ {print $2}')
      [ "$code" = 500 ] && grep -q "criu $v" <<<"$body" && grep -q "kernel $(uname -r)" <<<"$body" && grep -q "4.1 or later" <<<"$body" &&
        [ "$tot" -ge 1 ] && [ "$errs" -ge 1 ] && [ "$phase" = Running ] && ok=0
      check checkpoint $ok "CRIU $v cannot run on kernel $(uname -r): HTTP $code, '$(tr '\n' ' ' <<<"$body" | cut -c1-300)'; checkpoint_container operations +$tot, errors +$errs; Pod $phase"
    fi
  fi

  # ---- exec -----------------------------------------------------------------------
  out=$(kc exec "$main" -- sh -c 'echo exec-ok; echo kernel=$(uname -r); exit 7' 2>&1); rc=$?
  kexecs=$((kexecs + 1))
  ok=1; [ "$rc" = 7 ] && printf '%s\n' "$out" | grep -qx exec-ok && ok=0
  check exec $ok "exit code $rc (want 7), output: $(printf '%s\n' "$out" | tr '\n' '|')"
  out=$(echo stdin-roundtrip | kc exec -i "$main" -- cat 2>&1); rc=$?
  kexecs=$((kexecs + 1))
  ok=1; [ "$rc" = 0 ] && [ "$out" = stdin-roundtrip ] && ok=0
  check exec-stdin $ok "exit code $rc, output '$out'"

  # ---- one shim (and one gVisor sandbox) per Pod ------------------------------------
  two=$p-two; pods+=("$two")
  podspec "$two" "$H" Always <<EOF | kc apply -f - >/dev/null
  containers:
  - name: a
    image: $IMG
    imagePullPolicy: Never
    command: ["sh", "-c", "echo a; while true; do sleep 1; done"]
    resources: {limits: {cpu: 200m, memory: 32Mi}}
  - name: b
    image: $IMG
    imagePullPolicy: Never
    command: ["sh", "-c", "echo b; while true; do sleep 1; done"]
    resources: {limits: {cpu: 200m, memory: 32Mi}}
EOF
  if kc wait --for=condition=Ready "pod/$two" --timeout="${TIMEOUT}s" >/dev/null 2>&1; then
    uid=$(uid_of "$two"); sb=$(sandboxes_of "$uid" | head -1)
    cids=$(cri ps --pod "$sb" -q)
    nshim=$(shims_with "$sb" | grep -c .)
    other=0; for c in $cids; do other=$((other + $(shims_with "$c" | grep -c .))); done
    ok=1; [ "$nshim" = 1 ] && [ "$other" = 0 ] && [ "$(echo $cids | wc -w)" = 2 ] && ok=0
    check one-shim $ok "sandbox ${sb:0:13} + $(echo $cids | wc -w) containers: $nshim shim process(es) with the sandbox id ($(shims_with "$sb" | tr '\n' ' ')), $other with a container id"
    if is_gvisor "$H"; then
      nsb=$(sandbox_procs_with "$sb" | grep -c .)
      other=0; for c in $cids; do other=$((other + $(sandbox_procs_with "$c" | grep -c .))); done
      # the containers' processes all live in the one sandbox (sentry): same pid as the Pod's task
      ok=1; [ "$nsb" = 1 ] && [ "$other" = 0 ] && ok=0
      check one-sandbox $ok "$nsb runsc-sandbox process(es) for the Pod (pid $(sandbox_procs_with "$sb" | tr '\n' ' ')), $other for its containers"
    fi
    # the Pod's IPC: what one container puts in /dev/shm the other sees
    word=shm-$RANDOM$RANDOM
    out1=$(kc exec "$two" -c a -- sh -c "echo $word > /dev/shm/e2e && cat /dev/shm/e2e" 2>&1)
    out2=$(kc exec "$two" -c b -- cat /dev/shm/e2e 2>&1)
    kexecs=$((kexecs + 2))
    ok=1; [ "$out1" = "$word" ] && [ "$out2" = "$word" ] && ok=0
    check shm $ok "a wrote '$out1' to /dev/shm/e2e, b reads '$out2' (want $word)"
  else
    check one-shim 1 "two-container Pod not Ready: $(kc get pod "$two" --no-headers 2>&1)"
    is_gvisor "$H" && check one-sandbox 1 "two-container Pod not Ready"
    check shm 1 "two-container Pod not Ready"
  fi

  # ---- OOMKilled --------------------------------------------------------------------
  oom=$p-oom; pods+=("$oom")
  s=$(now)
  podspec "$oom" "$H" Never <<EOF | kc apply -f - >/dev/null
  containers:
  - name: hog
    image: $IMG
    imagePullPolicy: Never
    command: ["sh", "-c", "echo allocating; tail /dev/zero"]
    resources: {limits: {cpu: 500m, memory: 32Mi}}
EOF
  reason=""
  end=$(( $(date +%s) + TIMEOUT ))
  while [ "$(date +%s)" -lt "$end" ]; do
    reason=$(kc get pod "$oom" -o jsonpath='{.status.containerStatuses[0].state.terminated.reason}' 2>/dev/null)
    [ -n "$reason" ] && break; sleep 1
  done
  code=$(kc get pod "$oom" -o jsonpath='{.status.containerStatuses[0].state.terminated.exitCode}' 2>/dev/null)
  ok=1; [ "$reason" = OOMKilled ] && ok=0
  check oom $ok "reason=${reason:-none} exitCode=${code:-none} after $(since "$s")s (phase $(kc get pod "$oom" -o jsonpath='{.status.phase}'))"

  # ---- exec liveness probe restarts the container --------------------------------------
  # first run: the probe's file is missing -> killed and restarted; the marker in the
  # emptyDir makes the second run healthy, so the restart count settles at exactly 1
  live=$p-live; pods+=("$live")
  s=$(now)
  podspec "$live" "$H" Always <<EOF | kc apply -f - >/dev/null
  containers:
  - name: app
    image: $IMG
    imagePullPolicy: Never
    command: ["sh", "-c", "if [ -e /data/once ]; then touch /tmp/ok; echo second run; else touch /data/once; echo first run; fi; while true; do sleep 1; done"]
    livenessProbe:
      exec: {command: ["test", "-e", "/tmp/ok"]}
      initialDelaySeconds: 2
      periodSeconds: 2
      timeoutSeconds: 10
      failureThreshold: 1
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
EOF
  rc_live=""
  end=$(( $(date +%s) + TIMEOUT ))
  while [ "$(date +%s)" -lt "$end" ]; do
    rc_live=$(kc get pod "$live" -o jsonpath='{.status.containerStatuses[0].restartCount}' 2>/dev/null)
    [ "${rc_live:-0}" -ge 1 ] && kc wait --for=condition=Ready "pod/$live" --timeout=60s >/dev/null 2>&1 && break
    sleep 1
  done
  sleep 6   # three more probe periods: the second run stays healthy
  rc_live=$(kc get pod "$live" -o jsonpath='{.status.containerStatuses[0].restartCount}' 2>/dev/null)
  ev=$(kc get events --field-selector "involvedObject.name=$live,reason=Unhealthy" -o jsonpath='{.items[0].message}' 2>/dev/null)
  ok=1; [ "$rc_live" = 1 ] && [ "$(kc logs "$live" 2>/dev/null)" = "second run" ] && ok=0
  check liveness $ok "restartCount=${rc_live:-none} after $(since "$s")s, logs now '$(kc logs "$live" 2>&1 | tr '\n' ' ')', event: ${ev:-none}"

  # ---- kubelet /stats/summary: each container's CPU and memory -----------------------
  want="$main/main $two/a $two/b $live/app"
  parse='
import json, sys
want = sys.argv[1].split()
d = json.load(sys.stdin)
got = {}
for p in d.get("pods", []):
    for c in p.get("containers", []):
        cpu, mem = c.get("cpu", {}), c.get("memory", {})
        if cpu.get("usageCoreNanoSeconds") is not None and mem.get("workingSetBytes") is not None:
            got["%s/%s" % (p["podRef"]["name"], c["name"])] = "cpu=%.3fs mem=%.1fMiB" % (
                cpu["usageCoreNanoSeconds"] / 1e9, mem["workingSetBytes"] / 1048576.0)
missing = [w for w in want if w not in got]
print(("MISSING " + " ".join(missing) + " | ") if missing else "", end="")
print(", ".join("%s %s" % (w, got[w]) for w in want if w in got))
'
  line=""
  for i in $(seq 1 60); do
    line=$(kubelet_get /stats/summary | python3 -c "$parse" "$want" 2>&1)
    case "$line" in MISSING*|"") sleep 1 ;; *) break ;; esac
  done
  ok=1; case "$line" in MISSING*|""|Traceback*) ;; *) ok=0 ;; esac
  check stats $ok "/stats/summary (${i}s): $line"

  # ---- CRI ContainerStats: containerd asks the shim (Stats RPC) -----------------------
  # (/stats/summary above comes from cAdvisor reading the host cgroups unless the
  # kubelet runs with CRI_STATS=true; this one always reaches the shim)
  line=""; ok=0
  for pod in "$main" "$two" "$live"; do
    for c in $(containers_of "$(uid_of "$pod")"); do
      st=$(cri stats --id "$c" -o json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"][0]
cpu = int(s["cpu"]["usageCoreNanoSeconds"]["value"]); mem = int(s["memory"]["workingSetBytes"]["value"])
print("%s/%s cpu=%.3fs mem=%.1fMiB" % (s["attributes"]["labels"]["io.kubernetes.pod.name"], s["attributes"]["metadata"]["name"], cpu / 1e9, mem / 1048576.0) if cpu > 0 and mem > 0 else "")' 2>/dev/null)
      # exited containers (the liveness probe's first run) have no stats
      [ "$(cri inspect -o go-template --template '{{.status.state}}' "$c" 2>/dev/null)" = CONTAINER_RUNNING ] || continue
      if [ -n "$st" ]; then line="$line, $st"; else line="$line, ${c:0:13} NO STATS"; ok=1; fi
    done
  done
  check cri-stats $ok "crictl stats:${line#,}"

  # ---- the Pods' own stats: /stats/summary and CRI PodSandboxStats ----------------------
  # (containerd 2.4 asks a sandboxed handler's shim: SandboxMetrics, the pod cgroup)
  pparse='
import json, sys
want = sys.argv[1].split()
d = json.load(sys.stdin)
got = {}
for p in d.get("pods", []):
    cpu, mem = p.get("cpu", {}), p.get("memory", {})
    if cpu.get("usageCoreNanoSeconds") and mem.get("workingSetBytes"):
        got[p["podRef"]["name"]] = "cpu=%.3fs mem=%.1fMiB" % (cpu["usageCoreNanoSeconds"] / 1e9, mem["workingSetBytes"] / 1048576.0)
missing = [w for w in want if w not in got]
print(("MISSING " + " ".join(missing) + " | ") if missing else "", end="")
print(", ".join("%s %s" % (w, got[w]) for w in want if w in got))
'
  sline=""
  for i in $(seq 1 30); do
    sline=$(kubelet_get /stats/summary | python3 -c "$pparse" "$main $two $live" 2>&1)
    case "$sline" in MISSING*|"") sleep 1 ;; *) break ;; esac
  done
  ok=0; case "$sline" in MISSING*|""|Traceback*) ok=1 ;; esac
  pline=""
  for pod in "$main" "$two" "$live"; do
    psb=$(sandboxes_of "$(uid_of "$pod")" | head -1)
    st=""
    for i in $(seq 1 10); do
      st=$(cri statsp --id "$psb" -o json 2>&1 | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"][0]["linux"]
cpu = int(s["cpu"]["usageCoreNanoSeconds"]["value"]); mem = int(s["memory"]["workingSetBytes"]["value"])
print("cpu=%.3fs mem=%.1fMiB" % (cpu / 1e9, mem / 1048576.0) if cpu > 0 and mem > 0 else "")' 2>/dev/null)
      [ -n "$st" ] && break; sleep 1
    done
    if [ -n "$st" ]; then pline="$pline, $pod $st"; else pline="$pline, $pod (${psb:0:13}) NO STATS: $(cri statsp --id "$psb" -o json 2>&1 | tr -d '\n ' | head -c 200)"; ok=1; fi
  done
  check pod-stats $ok "/stats/summary: $sline; crictl statsp:${pline#,}"

  # ---- delete: no shim, no mount, no cgroup left --------------------------------------
  # what the test did, from the Pods themselves: sandboxes, and container starts
  # (restarts included), for the expected counters. On the pause path a sandbox is
  # a task (the pause container); on a sandboxed handler it is not, and the
  # sandboxes_* families count it instead.
  expect_created=0; expect_sb=0; expect_sb_died=0; ids=""; uids=""; holders0=""
  for pod in "${pods[@]}"; do
    uid=$(uid_of "$pod"); uids="$uids $uid"
    nsb=$(sandboxes_of "$uid" | grep -c .)
    starts=$(kc get pod "$pod" -o jsonpath='{range .status.containerStatuses[*]}{.restartCount}{" "}{end}' |
      awk '{for (i = 1; i <= NF; i++) s += $i + 1} END {print s + 0}')
    if is_sb "$H"; then
      expect_created=$((expect_created + starts)); expect_sb=$((expect_sb + nsb))
    else
      expect_created=$((expect_created + nsb + starts))
    fi
    ids="$ids $(sandboxes_of "$uid" | tr '\n' ' ') $(containers_of "$uid" | tr '\n' ' ')"
    for sb in $(sandboxes_of "$uid"); do
      for hp in $(holders_with "$sb"); do holders0="$holders0 $hp:$(pid_start "$hp")"; done
    done
  done
  # OOM kills, from the kernel's own record (dmesg: oom-kill ... task_memcg=<cgroup>):
  # a victim in a container's cgroup ends that container; a victim in the sandbox's
  # cgroup (gVisor: the sentry, which runs every container of the Pod) ends the
  # sandbox and every container still running in it. Fallback without dmesg: the
  # containers Kubernetes reports OOMKilled.
  expect_oom=0; oom_note=""
  if dmesg >/dev/null 2>&1; then
    ouid=$(uid_of "$oom"); osb=$(sandboxes_of "$ouid" | head -1)
    for leaf in $(dmesg | grep -o 'oom-kill:.*' | grep -F "pod$ouid/" | sed -n 's/.*task_memcg=[^,]*\/\([0-9a-f]\{64\}\),.*/\1/p' | sort -u); do
      if [ "$leaf" = "$osb" ]; then
        n=$(kc get pod "$oom" -o jsonpath='{range .status.containerStatuses[*]}{.state.terminated.reason}{" "}{end}' | wc -w)
        if is_sb "$H"; then
          expect_oom=$((expect_oom + n)); expect_sb_died=$((expect_sb_died + 1))
          oom_note="$oom_note kernel killed the sandbox (${leaf:0:13}): its $n container(s), and a sandbox died;"
        else
          expect_oom=$((expect_oom + 1 + n)); oom_note="$oom_note kernel killed the sandbox (${leaf:0:13}): sandbox + $n container(s);"
        fi
      else
        expect_oom=$((expect_oom + 1)); oom_note="$oom_note kernel killed container ${leaf:0:13};"
      fi
    done
  else
    expect_oom=$(kc get pod "$oom" -o jsonpath='{range .status.containerStatuses[*]}{.state.terminated.reason}{" "}{end}' | grep -o OOMKilled | wc -l)
    oom_note=" no dmesg: OOMKilled containers only;"
  fi

  s=$(now)
  kc delete pod "${pods[@]}" --wait=true --timeout=120s >/dev/null 2>&1; drc=$?
  left_shims() { local i; for i in $ids; do shims_with "$i"; runsc_procs_with "$i"; done | sort -u | tr '\n' ' '; }
  left_mounts() { local i; for i in $ids; do grep -F "$i" /proc/self/mounts; done | grep -F "$N/containerd" | awk '{print $2}' | sort -u; }
  # holders recorded before the delete (pid:start time) still alive, and any holder of
  # this node in a cgroup named for one of the Pods' sandboxes
  left_holders() {
    local e i
    for e in $holders0; do [ "$(pid_start "${e%%:*}")" = "${e#*:}" ] && echo "${e%%:*}"; done
    for i in $ids; do holders_with "$i"; done
  }
  left_cgroups() {
    local u i pat=(-false)
    for u in $uids; do pat+=(-o -name "pod$u" -o -name "pod${u//-/_}"); done
    for i in $ids; do pat+=(-o -name "*$i*"); done
    find /sys/fs/cgroup -mindepth 1 -maxdepth 7 -type d \( "${pat[@]}" \) 2>/dev/null
  }
  del_s=$(since "$s")
  # the kubelet and containerd finish the teardown asynchronously: poll up to 120 s,
  # noting when each kind of leftover was first seen gone. A sandbox that died on its
  # own (gVisor: the OOM-killed sentry) keeps CRI's shm mount until the kubelet's
  # garbage collector removes it, 30-60 s later (containerd's CRI does this for any
  # shim, containerd-shim-runc-v2 included).
  t_p=""; t_m=""; t_c=""; t_h=""; end=$(( $(date +%s) + 120 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    [ -n "$t_p" ] || { [ -z "$(left_shims)" ] && t_p=$(since "$s"); }
    [ -n "$t_m" ] || { [ -z "$(left_mounts)" ] && t_m=$(since "$s"); }
    [ -n "$t_c" ] || { [ -z "$(left_cgroups)" ] && t_c=$(since "$s"); }
    [ -n "$t_h" ] || { [ -z "$(left_holders)" ] && t_h=$(since "$s"); }
    [ -n "$t_p" ] && [ -n "$t_m" ] && [ -n "$t_c" ] && [ -n "$t_h" ] && break
    sleep 0.5
  done
  ls_=$(left_shims); lm=$(left_mounts); lc=$(left_cgroups); lh=$(left_holders | sort -u | tr '\n' ' ')
  check delete "$([ $drc = 0 ] && echo 0 || echo 1)" "kubectl delete --wait of ${#pods[@]} Pods: rc $drc, ${del_s}s"
  check cleanup-processes "$([ -z "$ls_" ] && echo 0 || echo 1)" "shim/runsc processes left for the Pods: ${ls_:-none} (gone ${t_p:-never}s after delete)"
  check cleanup-mounts "$([ -z "$lm" ] && echo 0 || echo 1)" "mounts left under $N/containerd: $(echo ${lm:-none} | head -c 400) (gone ${t_m:-never}s after delete)"
  check cleanup-cgroups "$([ -z "$lc" ] && echo 0 || echo 1)" "cgroups left for the Pods: $(echo ${lc:-none} | head -c 400) (gone ${t_c:-never}s after delete)"
  if is_sb "$H"; then
    nh=$(echo $holders0 | wc -w)
    ok=1; [ -z "$lh" ] && ok=0
    is_runc_sb "$H" && [ "$nh" = 0 ] && ok=1 # the runc backend's sandboxes are holders
    check cleanup-holder $ok "containerd-shim-custom-v2 sandbox-holder processes: $nh before the delete (pids$(for e in $holders0; do printf ' %s' "${e%%:*}"; done)), left: ${lh:-none} (gone ${t_h:-never}s after delete); this node's holders now: $(holders | tr '\n' ' ' | sed 's/^$/none/')"
  fi

  # ---- the aggregator's counters --------------------------------------------------------
  # sandboxes + container starts; one OOM kill; every task created has exited and
  # been deleted (the shims left final snapshots, the aggregator folded them in)
  cmp_metrics() {
    m1=$(metrics) || return 1
    created=$(( $(msum "$m1" tasks_created_total "$H") - created0 ))
    oomd=$(( $(msum "$m1" tasks_exited_total "$H" 'reason="oom_killed"') - oom0 ))
    exited=$(( $(msum "$m1" tasks_exited_total "$H") - exited0 ))
    deleted=$(( $(msum "$m1" tasks_deleted_total "$H") - deleted0 ))
    execs=$(( $(msum "$m1" execs_started_total "$H") - execs0 ))
    agg_start1=$(agg_start "$m1")
    sbc=$(( $(msum "$m1" sandboxes_created_total "$H") - sbc0 ))
    sbs=$(( $(msum "$m1" sandboxes_started_total "$H") - sbs0 ))
    sbe=$(( $(msum "$m1" sandboxes_exited_total "$H") - sbe0 ))
    sbd=$(( $(msum "$m1" sandboxes_exited_total "$H" 'reason="died"') - sbd0 ))
    sbsh=$(( $(msum "$m1" sandboxes_shutdown_total "$H") - sbsh0 ))
    sbl=$(( $(msum "$m1" sandbox_start_latency_seconds_count "$H") - sbl0 ))
    sbls=$(awk -v a="$(msum "$m1" sandbox_start_latency_seconds_sum "$H" "" %.6f)" -v b="$sbls0" 'BEGIN {printf "%.6f", a - b}')
    [ "$created" = "$expect_created" ] && [ "$oomd" = "$expect_oom" ] && [ "$exited" = "$expect_created" ] && [ "$deleted" = "$expect_created" ] &&
      [ "$sbc" = "$expect_sb" ] && [ "$sbs" = "$expect_sb" ] && [ "$sbe" = "$expect_sb" ] && [ "$sbd" = "$expect_sb_died" ] &&
      [ "$sbsh" = "$expect_sb" ] && [ "$sbl" = "$expect_sb" ]
  }
  until_true 30 cmp_metrics
  same="same aggregator"; [ "${agg_start1:-}" = "$agg_start0" ] || same="AGGREGATOR RESTARTED ($agg_start0 -> ${agg_start1:-?})"
  what="sandboxes + container starts"; is_sb "$H" && what="container starts; the sandboxes are no tasks here"
  check metrics-created "$([ "$created" = "$expect_created" ] && echo 0 || echo 1)" \
    "tasks_created_total{runtime_handler=\"$H\"} +$created, expected +$expect_created ($what; $same)"
  check metrics-oom "$([ "$oomd" = "$expect_oom" ] && [ "$expect_oom" -ge 1 ] && echo 0 || echo 1)" \
    "tasks_exited_total{reason=\"oom_killed\",runtime_handler=\"$H\"} +$oomd, expected +$expect_oom (${oom_note# })"
  check metrics-exited "$([ "$exited" = "$expect_created" ] && echo 0 || echo 1)" \
    "tasks_exited_total{runtime_handler=\"$H\"} (all reasons) +$exited, expected +$expect_created; totals by reason: $(printf '%s\n' "$m1" | grep -E '^containerd_shim_custom_tasks_exited_total\{' | grep -F "runtime_handler=\"$H\"" | sed -E 's/.*reason="([^"]*)".* /\1=/' | tr '\n' ' ')"
  check metrics-deleted "$([ "$deleted" = "$expect_created" ] && echo 0 || echo 1)" \
    "tasks_deleted_total{runtime_handler=\"$H\"} +$deleted, expected +$expect_created"
  check metrics-execs "$([ "$execs" -ge "$kexecs" ] && echo 0 || echo 1)" \
    "execs_started_total{runtime_handler=\"$H\"} +$execs, at least +$kexecs (kubectl exec; exec probes add the rest)"
  # the Sandbox API's families: one per sandbox on a sandboxed handler, none on the pause path
  wsb="the Pods' sandboxes"; is_sb "$H" || wsb="the pause path uses no Sandbox API"
  check metrics-sb-created "$([ "$sbc" = "$expect_sb" ] && echo 0 || echo 1)" \
    "sandboxes_created_total{runtime_handler=\"$H\"} +$sbc, expected +$expect_sb ($wsb)"
  check metrics-sb-started "$([ "$sbs" = "$expect_sb" ] && echo 0 || echo 1)" \
    "sandboxes_started_total{runtime_handler=\"$H\"} +$sbs, expected +$expect_sb"
  check metrics-sb-exited "$([ "$sbe" = "$expect_sb" ] && [ "$sbd" = "$expect_sb_died" ] && echo 0 || echo 1)" \
    "sandboxes_exited_total{runtime_handler=\"$H\"} +$sbe (died +$sbd, stopped +$((sbe - sbd))), expected +$expect_sb (died +$expect_sb_died: the kernel's OOM kill of a sandbox); totals by reason: $(printf '%s\n' "$m1" | grep -E '^containerd_shim_custom_sandboxes_exited_total\{' | grep -F "runtime_handler=\"$H\"" | sed -E 's/.*reason="([^"]*)".* /\1=/' | tr '\n' ' ')"
  check metrics-sb-shutdown "$([ "$sbsh" = "$expect_sb" ] && echo 0 || echo 1)" \
    "sandboxes_shutdown_total{runtime_handler=\"$H\"} +$sbsh, expected +$expect_sb"
  ok=1; [ "$sbl" = "$expect_sb" ] && { [ "$expect_sb" = 0 ] || awk -v s="$sbls" 'BEGIN {exit !(s > 0)}'; } && ok=0
  check metrics-sb-latency "$ok" \
    "sandbox_start_latency_seconds{runtime_handler=\"$H\"}: count +$sbl, expected +$expect_sb; sum +${sbls}s$([ "$sbl" -gt 0 ] && awk -v s="$sbls" -v n="$sbl" 'BEGIN {printf ", mean %.3fs", s / n}')"
  echo "-- $H: $(since "$hstart")s"
  HTIMES+=("$H $(since "$hstart")s")
done

# ---- user-namespaced Pods (hostUsers: false) on the handlers without options -------
# kubelet admits them only when the handler reports user namespaces (the shim's -info
# features, through CRI's RuntimeHandler features); shareProcessNamespace makes the
# holder's PID namespace the Pod's user namespace's too
for H in ${USERNS_HANDLER:-} ${USERNS_SB_HANDLER:-}; do
  hstart=$(now); last_check=$hstart
  echo
  echo "== $H"
  podspec userns "$H" Never <<EOF | kc apply -f - >/dev/null
  hostUsers: false
  shareProcessNamespace: true
  volumes: [{name: scratch, emptyDir: {}}]
  containers:
  - name: main
    image: $IMG
    imagePullPolicy: Never
    command: ["sh", "-c", "echo written-by-the-pod > /scratch/f; exec sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
EOF
  if kc wait --for=condition=Ready pod/userns --timeout="${TIMEOUT}s" >/dev/null 2>&1; then
    uidmap=$(kc exec userns -- cat /proc/self/uid_map 2>&1 | awk '{$1=$1; print}')
    inside=$(kc exec userns -- stat -c '%u:%g' /scratch/f 2>&1)
    pid1=$(kc exec userns -- cat /proc/1/cmdline 2>&1 | tr '\0' ' ')
    hostf=$N/kubelet/pods/$(uid_of userns)/volumes/kubernetes.io~empty-dir/scratch/f
    host=$(stat -c '%u:%g' "$hostf" 2>&1)
    cpid=$(cri inspect -o go-template --template '{{.info.pid}}' "$(containers_of "$(uid_of userns)" | head -1)" 2>/dev/null)
    procuid=$(awk '/^Uid:/ {print $2}' "/proc/${cpid:-0}/status" 2>/dev/null)
    base=$(awk 'NR == 1 && $1 == 0 {print $2}' <<<"$uidmap")
    # one mapping of 65536 ids, container 0 on a host id other than 0, the container's
    # root running as that host id; the volume is idmapped (kubelet's mappings, applied
    # by runc): the file is root's inside and, on disk, the host's root's
    ok=1
    [ "$(wc -l <<<"$uidmap")" = 1 ] && [ -n "$base" ] && [ "$base" != 0 ] && [ "$(awk '{print $3}' <<<"$uidmap")" = 65536 ] &&
      [ "$procuid" = "$base" ] && [ "$inside" = 0:0 ] && [ "$host" = 0:0 ] && ok=0
    check userns $ok "Running in $(since "$hstart")s; /proc/self/uid_map: '$uidmap'; the container's init (host pid ${cpid:-?}) runs as host uid ${procuid:-?}; PID 1 of the Pod: '${pid1% }'; the file it wrote to its emptyDir: $inside inside, $host on the host ($hostf)"
  else
    check userns 1 "not Ready after ${TIMEOUT}s: $(kc get pod userns --no-headers 2>&1); $(kc get events --field-selector involvedObject.name=userns -o jsonpath='{range .items[*]}{.reason}: {.message}{"\n"}{end}' | tail -3)"
  fi
  usb=$(sandboxes_of "$(uid_of userns)" | head -1)
  kc delete pod userns --wait=true --timeout=60s >/dev/null 2>&1
  # nothing left running: no process as the Pod's host uid, no shim for its sandbox (a
  # sandboxed handler's shim goes at RemovePodSandbox, when kubelet collects the Pod)
  left() { { [ -n "${base:-}" ] && ps -eo uid=,pid= | awk -v u="$base" '$1 == u {print $2}'; [ -z "$usb" ] || shims_with "$usb"; } | tr '\n' ' '; }
  nothing_left() { [ -z "$(left)" ]; }
  s=$(now); ok=1; [ -n "$usb" ] && until_true "$TIMEOUT" nothing_left && ok=0
  check userns-delete $ok "Pod deleted: processes of host uid ${base:-?} or shims of sandbox ${usb:0:13} left: $([ "$ok" = 0 ] && echo "none (gone $(since "$s")s after delete)" || left)"
  echo "-- $H: $(since "$hstart")s"
  HTIMES+=("$H $(since "$hstart")s")
  base=
done

echo
echo "== summary ($(since "$test_start")s; each check's time is since the previous check; node Ready $(sed -n 's/node_ready_seconds=//p' "$RUN/startup" 2>/dev/null)s after up)"
printf '%s\n' "${RESULTS[@]}" | awk '
  { h[$1]; c[$2]; r[$1" "$2] = $3; if (!($2 in seen)) { seen[$2]; order[++n] = $2 } if (!($1 in hs)) { hs[$1]; ho[++m] = $1 } }
  END {
    printf "%-20s", "check"; for (j = 1; j <= m; j++) printf " %-16s", ho[j]; printf "\n"
    for (i = 1; i <= n; i++) { printf "%-20s", order[i]; for (j = 1; j <= m; j++) { v = r[ho[j]" "order[i]]; sub(":", " ", v); printf " %-16s", (v == "" ? "-" : v) } printf "\n" }
  }'
printf '%-20s' "time"; for t in "${HTIMES[@]}"; do printf ' %-16s' "${t#* }"; done; echo
total=${#RESULTS[@]}
echo "$((total - fails))/$total checks passed"
[ "$fails" = 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL ($fails failed)"
[ "$fails" = 0 ]

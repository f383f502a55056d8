#!/usr/bin/env bash
# test.sh - end-to-end checks of containerd-shim-custom-v2 on the node that
# scripts/k8s/node.sh up started, for each RuntimeClass handler
# (default: node.sh's $RUNC_HANDLER $GVISOR_HANDLER, i.e. custom-runc custom-runsc;
# a subset with HANDLERS="...").
#
# Per handler:
#   run        a Pod with runtimeClassName=<handler> reaches Running, on the
#              handler, in a containerd-shim-custom-v2 process
#   logs       kubectl logs
#   exec       kubectl exec: output and exit code; stdin round trip
#   one-shim   a two-container Pod runs in one shim process (processes whose
#              command line carries the Pod's sandbox id); gVisor: one
#              runsc-sandbox process for the Pod
#   oom        a container over its memory limit ends with reason OOMKilled
#   liveness   a failing exec liveness probe restarts the container (restartCount 1)
#   stats      the kubelet's /stats/summary has each container's CPU and memory
#   cri-stats  crictl stats (CRI ContainerStats -> the shim's Stats) for each container
#   delete     kubectl delete --wait of the handler's Pods
#   cleanup-*  then: no shim or runsc process, no mount under the containerd state
#              dir, no cgroup for the Pods
# Once, before (as [aggregator]):
#   metrics-tls-*   a Pod on the Pod network (default handler) scrapes the aggregator
#              over TLS with basic auth, as an in-cluster Prometheus would: 200 with
#              the password; 401 with a wrong one; no connection without the CA;
#              no metrics in plain HTTP
#   metrics-reload  a change of the aggregator's config file (a constant label) is
#              in force within seconds, a bad one is refused (last_reload_successful
#              0, the old one stays), and the aggregator did not restart
#   metrics-*  the aggregator's counters for the handler moved by what this test
#              did: tasks_created_total (sandboxes + container starts, restarts
#              included), tasks_exited_total{reason="oom_killed"} (the kernel's OOM
#              victims: on gVisor the host kills the Pod's sentry, so the sandbox
#              and its container both exit oom_killed), all exits, deletes
# Prints PASS/FAIL per check and a summary; exits 1 if any check failed.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
eval "$("$here/node.sh" vars)" || exit 2
export KUBECONFIG=$N/etc/admin.kubeconfig
HANDLERS=${HANDLERS:-$RUNC_HANDLER $GVISOR_HANDLER}
TIMEOUT=${TIMEOUT:-120}
IMG=$BUSYBOX_IMAGE

kc() { "$K8S_BIN/kubectl" "$@"; }
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
# msum TEXT FAMILY HANDLER [LABEL-MATCH]: sum of the family's series for the handler
msum() {
  printf '%s\n' "$1" | grep -E "^containerd_shim_custom_$2\{" | grep -F "runtime_handler=\"$3\"" |
    { if [ -n "${4:-}" ]; then grep -F "$4"; else cat; fi; } | awk '{s += $NF} END {printf "%d", s}'
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

declare -a RESULTS=()
fails=0
H=
check() { # check NAME OK(0/1) DETAIL
  if [ "$2" = 0 ]; then echo "PASS [$H] $1: $3"; RESULTS+=("$H $1 PASS")
  else echo "FAIL [$H] $1: $3"; RESULTS+=("$H $1 FAIL"); fails=$((fails + 1)); fi
}
until_true() { # until_true TIMEOUT CMD...: retry every second
  local end=$(( $(date +%s) + $1 )); shift
  until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 1; done
}

podspec() { # podspec NAME HANDLER RESTART  (containers follow on stdin)
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: default, labels: {e2e: shim}}
spec:
  nodeName: $NODE_NAME
  runtimeClassName: $2
  restartPolicy: $3
  terminationGracePeriodSeconds: 2
  dnsPolicy: Default
  automountServiceAccountToken: false
  enableServiceLinks: false
EOF
  cat
}
uid_of() { kc get pod "$1" -o jsonpath='{.metadata.uid}'; }
sandboxes_of() { cri pods --label "io.kubernetes.pod.uid=$1" -q; }           # all, newest first
containers_of() { local s; for s in $(sandboxes_of "$1"); do cri ps -a --pod "$s" -q; done; }
shims_with() { ps -eo pid=,args= | awk -v id="$1" '$2 ~ /containerd-shim-custom-v2$/ && index($0 " ", " " id " ") {print $1}'; }
sandbox_procs_with() { ps -eo pid=,args= | awk -v id="$1" '$2 == "runsc-sandbox" && index($0, id) {print $1}'; }
runsc_procs_with() { ps -eo pid=,args= | awk -v id="$1" '$2 ~ /runsc/ && index($0, id) {print $1}'; }

echo "== node: Kubernetes $K8S_VERSION, node $NODE_NAME, state $N"
[ -f "$RUN/startup" ] && sed 's/^/   /' "$RUN/startup"
kc get node "$NODE_NAME" -o wide --no-headers || { echo "node not reachable: run scripts/k8s/node.sh up"; exit 2; }
echo "   shim: $(sha256sum < "$N/bin/containerd-shim-custom-v2" | cut -c1-16) version $("$N/bin/containerd-shim-custom-v2" --version 2>&1 | awk '/Version:/ {print $2}')"
# leftovers of an interrupted run
kc delete pods -l e2e=shim --grace-period=1 --wait=true --timeout=120s >/dev/null 2>&1

test_start=$(now)

# ---- the aggregator from inside the cluster network, over TLS with auth -------------------
H=aggregator
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

for H in $HANDLERS; do
  p=${H#custom-}
  hstart=$(now)
  echo
  echo "== $H"
  m0=$(metrics) || { check metrics-scrape 1 "aggregator on 127.0.0.1:$METRICS_PORT not answering"; continue; }
  agg_start0=$(agg_start "$m0")
  created0=$(msum "$m0" tasks_created_total "$H")
  exited0=$(msum "$m0" tasks_exited_total "$H")
  oom0=$(msum "$m0" tasks_exited_total "$H" 'reason="oom_killed"')
  deleted0=$(msum "$m0" tasks_deleted_total "$H")
  execs0=$(msum "$m0" execs_started_total "$H")
  kexecs=0
  pods=()

  # ---- run: one long-running Pod -------------------------------------------------
  main=$p-main; pods+=("$main")
  s=$(now)
  podspec "$main" "$H" Always <<EOF | kc apply -f - >/dev/null
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

  # ---- logs -----------------------------------------------------------------------
  until_true 20 sh -c "'$K8S_BIN/kubectl' logs '$main' 2>/dev/null | grep -q 'tick 2'"
  out=$(kc logs "$main" --tail=100 2>&1)
  ok=1; printf '%s\n' "$out" | grep -qx "hello-from-$H" && printf '%s\n' "$out" | grep -q 'tick 2' && ok=0
  check logs $ok "$(printf '%s\n' "$out" | head -3 | tr '\n' '|')"

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
    if [ "$H" = "$GVISOR_HANDLER" ]; then
      nsb=$(sandbox_procs_with "$sb" | grep -c .)
      other=0; for c in $cids; do other=$((other + $(sandbox_procs_with "$c" | grep -c .))); done
      # the containers' processes all live in the one sandbox (sentry): same pid as the Pod's task
      ok=1; [ "$nsb" = 1 ] && [ "$other" = 0 ] && ok=0
      check one-sandbox $ok "$nsb runsc-sandbox process(es) for the Pod (pid $(sandbox_procs_with "$sb" | tr '\n' ' ')), $other for its containers"
    fi
  else
    check one-shim 1 "two-container Pod not Ready: $(kc get pod "$two" --no-headers 2>&1)"
    [ "$H" = "$GVISOR_HANDLER" ] && check one-sandbox 1 "two-container Pod not Ready"
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

  # ---- delete: no shim, no mount, no cgroup left --------------------------------------
  # what the test did, from the Pods themselves: sandboxes, and container starts
  # (restarts included), for the expected counters
  expect_created=0; ids=""; uids=""
  for pod in "${pods[@]}"; do
    uid=$(uid_of "$pod"); uids="$uids $uid"
    nsb=$(sandboxes_of "$uid" | grep -c .)
    starts=$(kc get pod "$pod" -o jsonpath='{range .status.containerStatuses[*]}{.restartCount}{" "}{end}' |
      awk '{for (i = 1; i <= NF; i++) s += $i + 1} END {print s + 0}')
    expect_created=$((expect_created + nsb + starts))
    ids="$ids $(sandboxes_of "$uid" | tr '\n' ' ') $(containers_of "$uid" | tr '\n' ' ')"
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
        expect_oom=$((expect_oom + 1 + n)); oom_note="$oom_note kernel killed the sandbox (${leaf:0:13}): sandbox + $n container(s);"
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
  t_p=""; t_m=""; t_c=""; end=$(( $(date +%s) + 120 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    [ -n "$t_p" ] || { [ -z "$(left_shims)" ] && t_p=$(since "$s"); }
    [ -n "$t_m" ] || { [ -z "$(left_mounts)" ] && t_m=$(since "$s"); }
    [ -n "$t_c" ] || { [ -z "$(left_cgroups)" ] && t_c=$(since "$s"); }
    [ -n "$t_p" ] && [ -n "$t_m" ] && [ -n "$t_c" ] && break
    sleep 0.5
  done
  ls_=$(left_shims); lm=$(left_mounts); lc=$(left_cgroups)
  check delete "$([ $drc = 0 ] && echo 0 || echo 1)" "kubectl delete --wait of ${#pods[@]} Pods: rc $drc, ${del_s}s"
  check cleanup-processes "$([ -z "$ls_" ] && echo 0 || echo 1)" "shim/runsc processes left for the Pods: ${ls_:-none} (gone ${t_p:-never}s after delete)"
  check cleanup-mounts "$([ -z "$lm" ] && echo 0 || echo 1)" "mounts left under $N/containerd: $(echo ${lm:-none} | head -c 400) (gone ${t_m:-never}s after delete)"
  check cleanup-cgroups "$([ -z "$lc" ] && echo 0 || echo 1)" "cgroups left for the Pods: $(echo ${lc:-none} | head -c 400) (gone ${t_c:-never}s after delete)"

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
    [ "$created" = "$expect_created" ] && [ "$oomd" = "$expect_oom" ] && [ "$exited" = "$expect_created" ] && [ "$deleted" = "$expect_created" ]
  }
  until_true 30 cmp_metrics
  same="same aggregator"; [ "${agg_start1:-}" = "$agg_start0" ] || same="AGGREGATOR RESTARTED ($agg_start0 -> ${agg_start1:-?})"
  check metrics-created "$([ "$created" = "$expect_created" ] && echo 0 || echo 1)" \
    "tasks_created_total{runtime_handler=\"$H\"} +$created, expected +$expect_created (sandboxes + container starts; $same)"
  check metrics-oom "$([ "$oomd" = "$expect_oom" ] && [ "$expect_oom" -ge 1 ] && echo 0 || echo 1)" \
    "tasks_exited_total{reason=\"oom_killed\",runtime_handler=\"$H\"} +$oomd, expected +$expect_oom (${oom_note# })"
  check metrics-exited "$([ "$exited" = "$expect_created" ] && echo 0 || echo 1)" \
    "tasks_exited_total{runtime_handler=\"$H\"} (all reasons) +$exited, expected +$expect_created; totals by reason: $(printf '%s\n' "$m1" | grep -E '^containerd_shim_custom_tasks_exited_total\{' | grep -F "runtime_handler=\"$H\"" | sed -E 's/.*reason="([^"]*)".* /\1=/' | tr '\n' ' ')"
  check metrics-deleted "$([ "$deleted" = "$expect_created" ] && echo 0 || echo 1)" \
    "tasks_deleted_total{runtime_handler=\"$H\"} +$deleted, expected +$expect_created"
  check metrics-execs "$([ "$execs" -ge "$kexecs" ] && echo 0 || echo 1)" \
    "execs_started_total{runtime_handler=\"$H\"} +$execs, at least +$kexecs (kubectl exec; exec probes add the rest)"
  echo "-- $H: $(since "$hstart")s"
done

echo
echo "== summary ($(since "$test_start")s; node Ready $(sed -n 's/node_ready_seconds=//p' "$RUN/startup" 2>/dev/null)s after up)"
printf '%s\n' "${RESULTS[@]}" | awk '
  { h[$1]; c[$2]; r[$1" "$2] = $3; if (!($2 in seen)) { seen[$2]; order[++n] = $2 } if (!($1 in hs)) { hs[$1]; ho[++m] = $1 } }
  END {
    printf "%-20s", "check"; for (j = 1; j <= m; j++) printf " %-14s", ho[j]; printf "\n"
    for (i = 1; i <= n; i++) { printf "%-20s", order[i]; for (j = 1; j <= m; j++) { v = r[ho[j]" "order[i]]; printf " %-14s", (v == "" ? "-" : v) } printf "\n" }
  }'
total=${#RESULTS[@]}
echo "$((total - fails))/$total checks passed"
[ "$fails" = 0 ] && echo "RESULT: PASS" || echo "RESULT: FAIL ($fails failed)"
[ "$fails" = 0 ]

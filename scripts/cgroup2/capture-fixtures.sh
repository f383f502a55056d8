#!/bin/bash
# capture-fixtures.sh - runs in the cgroup v2 guest (vm.sh OUT capture-fixtures.sh RESULTS): real cgroup v2
# control files of runc containers, copied to /v2out/cgroup2/<mountpoint tree> for the unit tests' fixtures
# (pkg/runtime/cgroup/testdata/cgroup2):
#   testing/limited    a running `sleep` with memory.max 64 MiB, pids.max 64, cpu.max 50000 100000
#   testing/unlimited  a running `sleep` without limits
#   testing/oomkilled  a shell OOM-killed under memory.max 16 MiB, before its delete (the cgroup still there)
set -eu
out=/v2out/cgroup2; rm -rf "$out"; mkdir -p "$out/testing"
cp /sys/fs/cgroup/cgroup.controllers "$out/"
b=/tmp/bundle; mkdir -p $b/rootfs/bin $b/rootfs/proc $b/rootfs/sys $b/rootfs/dev $b/rootfs/tmp
cp /bin/busybox $b/rootfs/bin/; chroot $b/rootfs /bin/busybox --install -s /bin
cd $b; runc spec; cp config.json config.json.orig
config() { # name args-json resources-json
  jq --arg id "$1" --argjson args "$2" --argjson res "$3" '.process.terminal = false | .process.args = $args
    | .process.env = ["PATH=/bin"] | .linux.cgroupsPath = "/testing/" + $id | .linux.resources = $res' config.json.orig > config.json
}
copy() { # name
  local cg=/sys/fs/cgroup/testing/$1 f
  mkdir -p "$out/testing/$1"
  for f in "$cg"/*; do
    [ -f "$f" ] || continue
    cat "$f" > "$out/testing/$1/${f##*/}" 2>/dev/null || rm -f "$out/testing/$1/${f##*/}"
  done
  rm -f "$out/testing/$1/cgroup.procs" "$out/testing/$1/cgroup.threads"  # pids of this run
}
config limited '["sleep","1000"]' '{"memory":{"limit":67108864,"swap":67108864},"pids":{"limit":64},"cpu":{"quota":50000,"period":100000}}'
runc run -d limited </dev/null >/dev/null 2>&1
config unlimited '["sleep","1000"]' '{}'
runc run -d unlimited </dev/null >/dev/null 2>&1
config oomkilled '["sh","-c","x=a; while :; do x=$x$x; done"]' '{"memory":{"limit":16777216,"swap":16777216}}'
runc create oomkilled </dev/null >/dev/null 2>&1; runc start oomkilled
for i in $(seq 100); do [ "$(runc state oomkilled | jq -r .status)" = stopped ] && break; sleep 0.1; done
sleep 1
for c in limited unlimited oomkilled; do copy $c; runc delete -f $c; done
echo "captured into $out:"; (cd "$out" && find . -type f | sort | head -200)

package runtime

import (
	"context"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

// Pod describes a pod sandbox to a backend: what containerd's Sandbox API
// (CRI with sandboxer = "shim") asks for, already validated.
type Pod struct {
	ID        string
	Namespace string
	// Bundle is the sandbox's bundle (no config.json: containerd writes
	// none for a sandbox).
	Bundle bundle.Bundle
	// NetNS is the network namespace CRI made and configured; "" with the
	// host's network.
	NetNS    string
	Hostname string
	// HostIPC and SharedPID: the pod's IPC namespace is the host's; its
	// containers share one PID namespace (shareProcessNamespace), whose
	// init the sandbox process is.
	HostIPC   bool
	SharedPID bool
	HostPID   bool
	// Sysctls to apply in the pod's namespaces (namespaced keys only).
	Sysctls map[string]string
	// CgroupParent is the pod's cgroup (the kubelet's); the sandbox
	// process goes into a cgroup of its own under it, as pause does.
	CgroupParent string
	Annotations  map[string]string
	// Reaper is the shim's reaper (the sandbox process is its child).
	Reaper ReaperGate
	// UserNS is the pod's user namespace (hostUsers: false), nil for the
	// host's. CRI made NetNS inside it; the sandbox joins it and its
	// containers join the sandbox's.
	UserNS *UserNS
}

// UserNS is a pod's user namespace: CRI's one UID and one GID mapping, each
// mapping container id 0.
type UserNS struct {
	UID, GID specs.LinuxIDMapping
}

// PodSandbox is a pod's sandbox as a backend provides it: one live
// process, a child of the shim, whose namespaces the pod's containers join
// (runc: a small holder; gVisor: the runsc sandbox the containers run in).
// Its exit reaches the shim through the reaper.
type PodSandbox interface {
	// Start starts the sandbox process and returns its host pid.
	Start(ctx context.Context) (pid int, err error)
	// Stop ends it (SIGKILL: as pause, it holds nothing up). Stopping a
	// stopped sandbox succeeds.
	Stop(ctx context.Context) error
	// Delete removes what the sandbox left (runtime state, cgroup) once it
	// has exited; safe to retry.
	Delete(ctx context.Context) error
	// CgroupPath is the cgroup the sandbox process runs in, for the spec
	// containerd gives NRI.
	CgroupPath() string
}

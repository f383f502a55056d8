package sandbox

import (
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// podConfig is what the shim takes from CRI's PodSandboxConfig.
type podConfig struct {
	hostname     string
	dns          *criDNS
	sysctls      map[string]string
	cgroupParent string
	hostNetwork  bool
	hostIPC      bool
	sharedPID    bool // shareProcessNamespace (or a bare crictl config)
	hostPID      bool
	annotations  map[string]string
	labels       map[string]string
	name, uid    string
	namespace    string
	// userns is the pod's user namespace (hostUsers: false); nil: the host's.
	userns *runtime.UserNS
}

// CRI's defaults for every pod with a network of its own (its
// enable_unprivileged_ports and enable_unprivileged_icmp, on by default in
// containerd 2.x), unless the pod sets them.
var defaultSysctls = map[string]string{
	"net.ipv4.ip_unprivileged_port_start": "0",
	"net.ipv4.ping_group_range":           "0 2147483647",
}

// decodePodConfig reads CreateSandboxRequest.options: containerd's CRI
// sends the pod's runtime.v1.PodSandboxConfig.
func decodePodConfig(opts *anypb.Any, netnsPath string) (*podConfig, error) {
	if opts == nil || opts.GetTypeUrl() == "" {
		return nil, fmt.Errorf("sandbox options: no PodSandboxConfig (is this shim's handler configured with sandboxer = \"shim\" under CRI?): %w", errdefs.ErrInvalidArgument)
	}
	if !strings.HasSuffix(opts.GetTypeUrl(), "runtime.v1.PodSandboxConfig") {
		return nil, fmt.Errorf("sandbox options: type %q, want runtime.v1.PodSandboxConfig: %w", opts.GetTypeUrl(), errdefs.ErrInvalidArgument)
	}
	pc, err := decodeCRIPodConfig(opts.GetValue())
	if err != nil {
		return nil, fmt.Errorf("sandbox options: decode PodSandboxConfig: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	c := &podConfig{
		hostname:     pc.hostname,
		dns:          pc.dns,
		cgroupParent: pc.cgroupParent,
		annotations:  pc.annotations,
		labels:       pc.labels,
		name:         pc.name,
		uid:          pc.uid,
		namespace:    pc.namespace,
		sysctls:      map[string]string{},
	}
	c.hostNetwork = pc.network == modeNode
	c.hostIPC = pc.ipc == modeNode
	switch pc.pid {
	case modePod:
		c.sharedPID = true
	case modeNode:
		c.hostPID = true
	case modeTarget:
		return nil, fmt.Errorf("PodSandboxConfig: field \"linux.security_context.namespace_options.pid\": TARGET applies to containers, not pods: %w", errdefs.ErrInvalidArgument)
	}
	// No userns options is the host's user namespace (POD is the zero value).
	// CRI leaves the check of the mode to the sandbox controller (its pause
	// controller refuses what it cannot do, as this one must).
	if pc.userns != nil {
		u, err := podUserNS(pc)
		if err != nil {
			return nil, err
		}
		c.userns = u
	}
	if c.userns != nil && (c.hostNetwork || c.hostIPC || c.hostPID) {
		// As Kubernetes' validation of hostUsers: false; with the host's
		// network CRI gives no network namespace whose owner to join.
		return nil, fmt.Errorf("PodSandboxConfig: a user namespace (hostUsers: false) with the host's network, IPC or PID namespace: %w", errdefs.ErrInvalidArgument)
	}
	if c.hostNetwork {
		if netnsPath != "" {
			return nil, fmt.Errorf("sandbox %q: a netns_path for a host-network pod: %w", c.name, errdefs.ErrInvalidArgument)
		}
	} else if netnsPath == "" {
		return nil, fmt.Errorf("sandbox %q: field \"netns_path\": CRI gave no network namespace for a pod network: %w", c.name, errdefs.ErrInvalidArgument)
	}
	if c.hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node hostname: %w", err)
		}
		c.hostname = h
	}
	if !c.hostNetwork {
		for k, v := range defaultSysctls {
			// As CRI: no ping_group_range in a user namespace, which maps
			// only the pod's 65536 ids, not the range's.
			if c.userns != nil && k == "net.ipv4.ping_group_range" {
				continue
			}
			c.sysctls[k] = v
		}
	}
	for k, v := range pc.sysctls {
		if err := c.checkSysctl(k); err != nil {
			return nil, err
		}
		c.sysctls[k] = v
	}
	return c, nil
}

// checkSysctl refuses what the pod's namespaces cannot scope: a sysctl of
// the node, or a namespace the pod shares with the node.
func (c *podConfig) checkSysctl(k string) error {
	field := fmt.Sprintf("PodSandboxConfig: field \"linux.sysctls\": %q", k)
	switch {
	case strings.HasPrefix(k, "net."):
		if c.hostNetwork {
			return fmt.Errorf("%s: a network sysctl for a host-network pod: %w", field, errdefs.ErrInvalidArgument)
		}
	case k == "kernel.shmmax", k == "kernel.shmmni", k == "kernel.shmall", k == "kernel.shm_rmid_forced",
		k == "kernel.msgmax", k == "kernel.msgmni", k == "kernel.msgmnb", k == "kernel.sem",
		strings.HasPrefix(k, "fs.mqueue."):
		if c.hostIPC {
			return fmt.Errorf("%s: an IPC sysctl for a host-IPC pod: %w", field, errdefs.ErrInvalidArgument)
		}
	default:
		return fmt.Errorf("%s: not a namespaced sysctl: %w", field, errdefs.ErrInvalidArgument)
	}
	if strings.ContainsAny(k, "/\x00") || strings.Contains(k, "..") {
		return fmt.Errorf("%s: invalid name: %w", field, errdefs.ErrInvalidArgument)
	}
	return nil
}

// resolvConf renders the pod's DNS configuration as CRI's podsandbox
// controller does; "" means a copy of the node's.
func resolvConf(dns *criDNS) string {
	if dns == nil {
		return ""
	}
	var b strings.Builder
	if len(dns.searches) > 0 {
		b.WriteString("search " + strings.Join(dns.searches, " ") + "\n")
	}
	for _, s := range dns.servers {
		b.WriteString("nameserver " + s + "\n")
	}
	if len(dns.options) > 0 {
		b.WriteString("options " + strings.Join(dns.options, " ") + "\n")
	}
	return b.String()
}

const usernsField = "PodSandboxConfig: field \"linux.security_context.namespace_options.userns_options"

// podUserNS validates a pod's user namespace options as containerd's pause
// controller does (its parseUsernsIDs): NODE without mappings is the host's
// (nil); POD needs one UID and one GID mapping, each mapping the pod's root.
func podUserNS(pc *criPodConfig) (*runtime.UserNS, error) {
	switch *pc.userns {
	case modeNode:
		if len(pc.uids) != 0 || len(pc.gids) != 0 {
			return nil, fmt.Errorf("%s\": mode NODE with %d UID and %d GID mappings: %w", usernsField, len(pc.uids), len(pc.gids), errdefs.ErrInvalidArgument)
		}
		return nil, nil
	case modePod:
	default:
		return nil, fmt.Errorf("%s.mode\": unsupported user namespace mode %s (only NODE, or POD with mappings): %w", usernsField, *pc.userns, errdefs.ErrInvalidArgument)
	}
	one := func(name string, ms []idMapping) (specs.LinuxIDMapping, error) {
		if len(ms) != 1 {
			return specs.LinuxIDMapping{}, fmt.Errorf("%s.%s\": %d mappings, want exactly one: %w", usernsField, name, len(ms), errdefs.ErrInvalidArgument)
		}
		m := ms[0]
		if m.length == 0 || m.containerID != 0 || uint64(m.hostID)+uint64(m.length) > 1<<32 {
			return specs.LinuxIDMapping{}, fmt.Errorf("%s.%s\": mapping container %d to host %d, length %d: want the pod's root (container id 0) mapped, a length of at least 1, within 32 bits: %w",
				usernsField, name, m.containerID, m.hostID, m.length, errdefs.ErrInvalidArgument)
		}
		return specs.LinuxIDMapping{ContainerID: 0, HostID: m.hostID, Size: m.length}, nil
	}
	uid, err := one("uids", pc.uids)
	if err != nil {
		return nil, err
	}
	gid, err := one("gids", pc.gids)
	if err != nil {
		return nil, err
	}
	return &runtime.UserNS{UID: uid, GID: gid}, nil
}

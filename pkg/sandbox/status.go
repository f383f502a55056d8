package sandbox

import (
	"context"
	"fmt"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	sandboxapi "github.com/containerd/containerd/api/runtime/sandbox/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/cgroups/systemd"
	"google.golang.org/protobuf/proto"
)

// Platform reports the sandbox's platform; CRI builds container specs
// from it. CRI asks before it creates a container, so it is also where the
// pod's files are laid out again if a containerd restart removed them.
func (s *Service) Platform(ctx context.Context, r *sandboxapi.PlatformRequest) (*sandboxapi.PlatformResponse, error) {
	sb, err := s.get(r.GetSandboxID())
	if err != nil {
		return nil, err
	}
	sb.relay(ctx)
	return &sandboxapi.PlatformResponse{Platform: &types.Platform{OS: "linux", Architecture: goruntime.GOARCH}}, nil
}

// SandboxStatus reports the sandbox; CRI reads sandbox_id, pid and state.
func (s *Service) SandboxStatus(ctx context.Context, r *sandboxapi.SandboxStatusRequest) (*sandboxapi.SandboxStatusResponse, error) {
	sb, err := s.lookup(r.GetSandboxID(), true)
	if err != nil {
		return nil, err
	}
	sb.relay(ctx)
	sb.mu.Lock()
	defer sb.mu.Unlock()
	resp := &sandboxapi.SandboxStatusResponse{
		SandboxID: sb.id,
		State:     sb.criStateLocked(),
		CreatedAt: protobuf.ToTimestamp(sb.createdAt),
	}
	if sb.st == stateRunning {
		resp.Pid = uint32(sb.pid)
	}
	if !sb.exitedAt.IsZero() {
		resp.ExitedAt = protobuf.ToTimestamp(sb.exitedAt)
	}
	return resp, nil
}

// PingSandbox answers for a sandbox this shim hosts.
func (s *Service) PingSandbox(ctx context.Context, r *sandboxapi.PingRequest) (*sandboxapi.PingResponse, error) {
	if _, err := s.get(r.GetSandboxID()); err != nil {
		return nil, err
	}
	return &sandboxapi.PingResponse{}, nil
}

// SandboxMetrics returns the pod cgroup's metrics, as containerd's
// podsandbox controller does for a pause pod (containerd 2.4 asks every
// second).
func (s *Service) SandboxMetrics(ctx context.Context, r *sandboxapi.SandboxMetricsRequest) (*sandboxapi.SandboxMetricsResponse, error) {
	sb, err := s.get(r.GetSandboxID())
	if err != nil {
		return nil, err
	}
	st, err := podCgroupStats(sb.pod.cgroupParent)
	if err != nil {
		return nil, fmt.Errorf("metrics of sandbox %s: %w", sb.id, err)
	}
	data, err := typeurl.MarshalAnyToProto(st)
	if err != nil {
		return nil, err
	}
	return &sandboxapi.SandboxMetricsResponse{Metrics: &types.Metric{
		Timestamp: protobuf.ToTimestamp(time.Now()),
		ID:        sb.id,
		Data:      data,
	}}, nil
}

// podCgroupStats reads the pod's cgroup (the kubelet's cgroup parent).
func podCgroupStats(parent string) (proto.Message, error) {
	if parent == "" {
		return nil, fmt.Errorf("the pod has no cgroup parent: %w", errdefs.ErrNotFound)
	}
	path := parent
	// A slice's name expands to its path; kubelet's systemd driver passes
	// the path itself (/kubepods.slice/.../<pod>.slice), which ExpandSlice
	// refuses.
	if strings.HasSuffix(parent, ".slice") && !strings.Contains(parent, "/") {
		p, err := systemd.ExpandSlice(parent)
		if err != nil {
			return nil, fmt.Errorf("cgroup parent %s: %w", parent, err)
		}
		path = p
	}
	if cgroups.Mode() == cgroups.Unified {
		m, err := cgroup2.Load(path)
		if err != nil {
			return nil, fmt.Errorf("pod cgroup %s: %w: %w", path, err, errdefs.ErrNotFound)
		}
		return m.Stat()
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(path))
	if err != nil {
		return nil, fmt.Errorf("pod cgroup %s: %w: %w", path, err, errdefs.ErrNotFound)
	}
	return cg.Stat(cgroup1.IgnoreNotExist)
}

// UpdateSandbox (in-place pod resize, containerd 2.4) is not supported:
// containerd tolerates NotImplemented.
func (s *Service) UpdateSandbox(ctx context.Context, r *sandboxapi.UpdateSandboxRequest) (*sandboxapi.UpdateSandboxResponse, error) {
	return nil, fmt.Errorf("update sandbox %s: %w", r.GetSandboxID(), errdefs.ErrNotImplemented)
}

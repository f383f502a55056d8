package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/cgroup"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/sandbox"
)

// runDelete is the "delete" action: containerd runs it when a shim died (or
// a start failed) to clean up what the shim left: the backend's container,
// the rootfs mount, a dead socket. It reports the init's exit.
func runDelete(ctx context.Context, f *flags, reg *runtime.Registry, stdout io.Writer) error {
	dir := f.bundle
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		dir = wd
	}
	b := bundle.Bundle(dir)
	// Logs go to stderr, which containerd logs as warnings.
	log.L.Logger.SetOutput(os.Stderr)

	// A pod sandbox's bundle: the whole pod goes (containerd 2.2 runs no
	// "delete" for the pod's containers).
	sandbox.CleanupDead(ctx, reg, f.namespace, b, func(id string, cb bundle.Bundle) {
		cleanupBackend(ctx, reg, f.namespace, id, cb)
		if err := mount.UnmountRecursive(cb.Rootfs(), 0); err != nil {
			log.G(ctx).WithError(err).Warn("unmount a pod container's rootfs")
		}
	})
	cleanupBackend(ctx, reg, f.namespace, f.id, b)
	leavePool(ctx, f.namespace, f.id)
	if err := mount.UnmountRecursive(b.Rootfs(), 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmount rootfs")
	}
	removeDeadSocket(f.namespace, b)

	e, err := b.ReadExit()
	if err != nil {
		pid, _ := bundle.ReadPidFile(b.InitPidFile())
		e = bundle.Exit{Pid: pid, Status: 128 + int(unix.SIGKILL), Timestamp: time.Now()}
	}
	data, err := proto.Marshal(&taskAPI.DeleteResponse{
		Pid:        uint32(e.Pid),
		ExitStatus: uint32(e.Status),
		ExitedAt:   protobuf.ToTimestamp(e.Timestamp),
	})
	if err != nil {
		return err
	}
	_, err = stdout.Write(data)
	return err
}

// cleanupBackend force-deletes the task's container in the backend the shim
// recorded in the bundle at Create.
func cleanupBackend(ctx context.Context, reg *runtime.Registry, ns, id string, bdl bundle.Bundle) {
	cfg, err := reg.Schema().ReadConfigFile(bdl)
	if errdefs.IsNotFound(err) {
		return // Create never got as far as the backend
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("read shim config from bundle; trying defaults")
		cfg = reg.Schema().DefaultConfig()
	}
	spec, err := oci.ReadSpec(bdl)
	if err != nil {
		log.G(ctx).WithError(err).Warn("read bundle spec")
		spec = &specs.Spec{}
	}
	// First, and at once: containerd gives this command 5 s, and the
	// runtime's delete (libcontainer's, runc's or runsc's, with systemd's
	// unit stop) may take longer on a loaded node; cut short, it would
	// leave the container running in its scope. With its processes gone
	// the scope goes by itself.
	if spec.Linux != nil {
		if err := cgroup.KillAll(spec.Linux.CgroupsPath); err != nil {
			log.G(ctx).WithError(err).Warn("kill the processes of the container's cgroup")
		}
	}
	b, err := reg.New(cfg, &runtime.Container{ID: id, Namespace: ns, Bundle: bdl, Spec: spec, Group: oci.GroupID(id, spec.Annotations)})
	if err != nil {
		log.G(ctx).WithError(err).Warn("cannot clean up backend state")
		return
	}
	if err := b.Delete(ctx, id, true); err != nil {
		log.G(ctx).WithError(err).Warn("force delete container")
	}
}

// removeDeadSocket removes the socket of a shim that no longer answers, so
// a SIGKILLed shim leaves no socket behind. containerd recorded the address
// in bootstrap.json (2.x) or address (1.x).
func removeDeadSocket(namespace string, b bundle.Bundle) {
	var address string
	if data, err := os.ReadFile(b.BootstrapFile()); err == nil {
		var b struct {
			Address string `json:"address"`
		}
		if json.Unmarshal(data, &b) == nil {
			address = b.Address
		}
	}
	if address == "" {
		if data, err := os.ReadFile(b.AddressFile()); err == nil {
			address = string(data)
		}
	}
	// A pod's containers share their sandbox's socket: a container's
	// delete must never take a live pod shim's.
	if address == "" || !serverGone(address) {
		return
	}
	if err := cshim.RemoveSocket(address); err != nil && !os.IsNotExist(err) {
		log.L.WithError(err).Warn(fmt.Sprintf("remove dead shim socket %s", address))
	}
	// Its metrics socket too (removed only if nothing answers there).
	name := metrics.Name(namespace, filepath.Base(trimUnix(address)))
	sockets, _ := metrics.Dirs()
	if err := metrics.CleanupSocket(metrics.SocketPath(sockets, name)); err != nil {
		log.L.WithError(err).Debug("remove dead shim metrics socket")
	}
}

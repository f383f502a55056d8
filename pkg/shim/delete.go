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
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

const exitStatusFile = "custom-shim-exit.json"

// writeExitStatus records an init's exit in its bundle so that "delete"
// can report it after the shim is gone.
func writeExitStatus(bundle string, e runtime.Exit) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, "."+exitStatusFile)
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(bundle, exitStatusFile))
}

func readExitStatus(bundle string) (runtime.Exit, error) {
	var e runtime.Exit
	data, err := os.ReadFile(filepath.Join(bundle, exitStatusFile))
	if err != nil {
		return e, err
	}
	return e, json.Unmarshal(data, &e)
}

// runDelete is the "delete" action: containerd runs it when a shim died (or
// a start failed) to clean up what the shim left: the backend's container,
// the rootfs mount, a dead socket. It reports the init's exit.
func runDelete(ctx context.Context, f *flags, stdout io.Writer) error {
	bundle := f.bundle
	if bundle == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		bundle = wd
	}
	// Logs go to stderr, which containerd logs as warnings.
	log.L.Logger.SetOutput(os.Stderr)

	cleanupBackend(ctx, f.namespace, f.id, bundle)
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmount rootfs")
	}
	removeDeadSocket(f.namespace, bundle)

	e, err := readExitStatus(bundle)
	if err != nil {
		pid, _ := gorunc.ReadPidFile(filepath.Join(bundle, "init.pid"))
		e = runtime.Exit{Pid: pid, Status: 128 + int(unix.SIGKILL), Timestamp: time.Now()}
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
func cleanupBackend(ctx context.Context, ns, id, bundle string) {
	cfg, err := oci.ReadConfigFile(bundle)
	if errdefs.IsNotFound(err) {
		return // Create never got as far as the backend
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("read shim config from bundle; trying defaults")
		cfg = oci.DefaultConfig()
	}
	factory, ok := DefaultBackends[cfg.Backend]
	if !ok {
		log.G(ctx).WithField("backend", cfg.Backend).Warn("unknown backend in bundle")
		return
	}
	spec, err := oci.ReadSpec(bundle)
	if err != nil {
		log.G(ctx).WithError(err).Warn("read bundle spec")
		spec = &specs.Spec{}
	}
	b, err := factory(cfg, ns, bundle, spec)
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
func removeDeadSocket(namespace, bundle string) {
	var address string
	if data, err := os.ReadFile(filepath.Join(bundle, "bootstrap.json")); err == nil {
		var b struct {
			Address string `json:"address"`
		}
		if json.Unmarshal(data, &b) == nil {
			address = b.Address
		}
	}
	if address == "" {
		if data, err := os.ReadFile(filepath.Join(bundle, "address")); err == nil {
			address = string(data)
		}
	}
	if address == "" || cshim.CanConnect(address) {
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

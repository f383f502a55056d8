package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"syscall"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/defaults"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
)

// Protocol the shim answers containerd with.
type replyKind int

const (
	// replyProto: containerd 2.3+ sent BootstrapParams; answer a
	// BootstrapResult protobuf.
	replyProto replyKind = iota
	// replyJSON: containerd 2.0-2.2; answer {"version":3,...} JSON.
	replyJSON
	// replyAddress: containerd 1.x; answer the bare address (task API v2).
	replyAddress
)

// bootstrap is what "start" learned from containerd.
type bootstrap struct {
	kind         replyKind
	ttrpcAddress string
	grpcAddress  string
	socketDir    string
	debug        bool
	options      *anypb.Any
}

// readBootstrap works out which containerd is calling from stdin: 2.3+
// writes a BootstrapParams whose ids match the flags; older lines write the
// runtime options Any (or nothing). A 2.x daemon sets MAX_SHIM_VERSION in
// the shim's environment, 1.x does not.
func readBootstrap(f *flags, stdin io.Reader) (*bootstrap, error) {
	input, err := io.ReadAll(io.LimitReader(stdin, 10<<20))
	if err != nil {
		return nil, fmt.Errorf("read bootstrap input from stdin: %w", err)
	}
	b := &bootstrap{
		ttrpcAddress: os.Getenv("TTRPC_ADDRESS"),
		grpcAddress:  f.address,
		debug:        f.debug,
	}
	var params bootapi.BootstrapParams
	if len(input) > 0 && proto.Unmarshal(input, &params) == nil &&
		params.GetInstanceID() == f.id && params.GetNamespace() == f.namespace {
		b.kind = replyProto
		if a := params.GetContainerdTtrpcAddress(); a != "" {
			b.ttrpcAddress = a
		}
		if a := params.GetContainerdGrpcAddress(); a != "" {
			b.grpcAddress = a
		}
		b.socketDir = params.GetSocketDir()
		b.debug = b.debug || params.GetLogLevel() <= bootapi.LogLevel_LOG_LEVEL_DEBUG
		for _, ext := range params.GetExtensions() {
			if v := ext.GetValue(); v.MessageIs(&runcoptions.Options{}) || v.MessageIs(&runtimeoptions.Options{}) {
				b.options = v
			}
		}
		return b, nil
	}
	if os.Getenv("MAX_SHIM_VERSION") != "" {
		b.kind = replyJSON
	} else {
		b.kind = replyAddress
	}
	if len(input) > 0 {
		var a anypb.Any
		if err := proto.Unmarshal(input, &a); err != nil {
			return nil, fmt.Errorf("decode runtime options from stdin: %w", err)
		}
		b.options = &a
	}
	return b, nil
}

// runStart is the "start" action: find or start the shim process for the
// container's group and tell containerd its address.
func runStart(ctx context.Context, f *flags, stdin io.Reader, stdout io.Writer) (retErr error) {
	b, err := readBootstrap(f, stdin)
	if err != nil {
		return err
	}
	bundle, err := os.Getwd()
	if err != nil {
		return err
	}
	spec, err := oci.ReadSpec(bundle)
	if err != nil {
		return err
	}
	group := oci.GroupID(f.id, spec.Annotations)

	socketDir := b.socketDir
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	if err := ensureSocketDir(socketDir); err != nil {
		return err
	}
	address, err := cshim.CreateSocketAddress(ctx, socketDir, b.grpcAddress, group, false)
	if err != nil {
		return err
	}
	listener, err := cshim.NewSocket(address)
	if err != nil {
		if !cshim.SocketEaddrinuse(err) {
			return fmt.Errorf("create shim socket %s: %w", address, err)
		}
		// The group's shim is already serving: that is grouping.
		if cshim.CanConnect(address) {
			return reply(stdout, b.kind, address)
		}
		if err := cshim.RemoveSocket(address); err != nil {
			return fmt.Errorf("remove stale shim socket %s: %w", address, err)
		}
		if listener, err = cshim.NewSocket(address); err != nil {
			return fmt.Errorf("create shim socket %s: %w", address, err)
		}
	}
	defer func() {
		if retErr != nil {
			listener.Close()
			cshim.RemoveSocket(address)
		}
	}()
	sock, err := listener.File()
	if err != nil {
		return fmt.Errorf("socket file: %w", err)
	}
	defer sock.Close()

	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"-namespace", f.namespace, "-id", f.id, "-address", b.grpcAddress, "-socket", trimUnix(address)}
	if b.debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = bundle
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+b.ttrpcAddress, "GOMAXPROCS=2")
	cmd.ExtraFiles = []*os.File{sock}
	// Own process group: signals sent to containerd's group must not reach
	// the shim, which outlives containerd restarts.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	goruntime.LockOSThread()
	err = cmd.Start()
	goruntime.UnlockOSThread()
	if err != nil {
		return fmt.Errorf("start shim server: %w", err)
	}
	defer func() {
		if retErr != nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	go cmd.Wait() // the server outlives us; reap it if it dies first

	if err := joinShimCgroup(cmd.Process.Pid, b.options); err != nil {
		return err
	}
	if err := cshim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		// Hosts without CAP_SYS_RESOURCE cannot lower scores (containerd
		// under systemd runs at -999, so parent+1 is a lowering): the shim
		// still works, it is just as killable as any process.
		if errors.Is(err, os.ErrPermission) {
			log.G(ctx).WithError(err).Warn("cannot adjust shim OOM score; continuing")
		} else {
			return fmt.Errorf("adjust shim OOM score: %w", err)
		}
	}
	return reply(stdout, b.kind, address)
}

// ensureSocketDir makes the shared socket directory 0700, whatever mode it
// was left with, as containerd does when it starts: only root may reach
// shim sockets.
func ensureSocketDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create socket directory %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("restrict socket directory %s: %w", dir, err)
		}
	}
	return nil
}

// joinShimCgroup moves the shim into the cgroup named by containerd's runc
// option ShimCgroup (containerd's WithShimCgroup task option).
func joinShimCgroup(pid int, opts *anypb.Any) error {
	if opts == nil || !opts.MessageIs(&runcoptions.Options{}) {
		return nil
	}
	var ro runcoptions.Options
	if err := opts.UnmarshalTo(&ro); err != nil {
		return fmt.Errorf("decode runc options: %w", err)
	}
	if ro.ShimCgroup == "" {
		return nil
	}
	if cgroups.Mode() == cgroups.Unified {
		cg, err := cgroupsv2.Load(ro.ShimCgroup)
		if err != nil {
			return fmt.Errorf("load shim cgroup %s: %w", ro.ShimCgroup, err)
		}
		if err := cg.AddProc(uint64(pid)); err != nil {
			return fmt.Errorf("join shim cgroup %s: %w", ro.ShimCgroup, err)
		}
		return nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(ro.ShimCgroup))
	if err != nil {
		return fmt.Errorf("load shim cgroup %s: %w", ro.ShimCgroup, err)
	}
	if err := cg.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("join shim cgroup %s: %w", ro.ShimCgroup, err)
	}
	return nil
}

func reply(w io.Writer, kind replyKind, address string) error {
	var data []byte
	switch kind {
	case replyProto:
		var err error
		data, err = proto.Marshal(&bootapi.BootstrapResult{Version: 3, Address: address, Protocol: "ttrpc"})
		if err != nil {
			return err
		}
	case replyJSON:
		data, _ = json.Marshal(map[string]any{"version": 3, "address": address, "protocol": "ttrpc"})
	default:
		data = []byte(address)
	}
	_, err := w.Write(data)
	return err
}

package shim

import (
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/defaults"
	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
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
	// replyAddress: containerd 1.x; answer the bare address (task API v2)
	// and leave it in the bundle's "address" file, where 1.x looks for it
	// when it reconnects after a restart.
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
// runtime options Any (or nothing). 1.7 and 2.0-2.2 call "start" alike
// (same flags, same stdin, both set MAX_SHIM_VERSION=2), so which of them
// it is comes from containerd itself (legacyDaemon).
// legacy is asked only when stdin is not a BootstrapParams (it may dial
// containerd).
func readBootstrap(f *flags, stdin io.Reader, legacy func() bool) (*bootstrap, error) {
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
	if legacy() {
		b.kind = replyAddress
	} else {
		b.kind = replyJSON
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
	b, err := readBootstrap(f, stdin, func() bool { return legacyDaemon(ctx, f) })
	if err != nil {
		return err
	}
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	group, err := groupOf(f.id, bundle.Bundle(wd), b.options)
	if err != nil {
		return err
	}

	socketDir := b.socketDir
	if socketDir == "" {
		socketDir = filepath.Join(defaults.DefaultStateDir, "s")
	}
	if err := ensureSocketDir(socketDir); err != nil {
		return err
	}
	addressOf := func(group string) (string, error) {
		return cshim.CreateSocketAddress(ctx, socketDir, b.grpcAddress, group, false)
	}
	// A handler with pods_per_shim: the Pod's slot in its pool is the
	// group. The pool's lock is held until the slot's socket is bound
	// or found served (see pool.Admit).
	group, poolDir, releasePool, err := poolGroup(f, b.grpcAddress, group, wd, b.options, addressOf)
	if err != nil {
		return err
	}
	defer releasePool()
	address, err := addressOf(group)
	if err != nil {
		return err
	}
	listener, err := cshim.NewSocket(address)
	if err != nil {
		if !cshim.SocketEaddrinuse(err) {
			return fmt.Errorf("create shim socket %s: %w", address, err)
		}
		// The group's shim is already serving (even if too busy to
		// answer at once): that is grouping.
		if !serverGone(address) {
			if err := writeAddressFile(b.kind, address); err != nil {
				return err
			}
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
			// Best effort: the error being returned is the one to report.
			_ = listener.Close()
			_ = cshim.RemoveSocket(address)
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
	if poolDir != "" {
		args = append(args, "-pool", poolDir, "-group", group)
	}
	if b.debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = wd
	cmd.Env = serverEnv(os.Environ(), b.ttrpcAddress)
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
	// The server outlives us; reap it if it dies first. Only this goroutine
	// waits: a second cmd.Wait (the cleanup's) raced with it.
	reaped := make(chan struct{})
	go func() {
		_ = cmd.Wait() // its exit status is nobody's business here
		close(reaped)
	}()
	defer func() {
		if retErr != nil {
			_ = cmd.Process.Kill() // fails only if it is gone already
			<-reaped
		}
	}()

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
	if err := writeAddressFile(b.kind, address); err != nil {
		return err
	}
	return reply(stdout, b.kind, address)
}

// groupOf names the shim group a start is for: a container's grouping
// annotations; for a pod sandbox (containerd's Sandbox API: the bundle has
// no config.json), the sandbox itself, whose runtime options are kept in
// the bundle for the server (CreateSandbox does not carry them).
func groupOf(id string, b bundle.Bundle, opts *anypb.Any) (string, error) {
	spec, err := oci.ReadSpec(b)
	if err == nil {
		return oci.GroupID(id, spec.Annotations), nil
	}
	if !errdefs.IsNotFound(err) {
		return "", err
	}
	if opts != nil {
		data, err := proto.Marshal(opts)
		if err != nil {
			return "", err
		}
		if err := bundle.WriteFileAtomic(b.RuntimeOptions(), data, 0o600); err != nil {
			return "", fmt.Errorf("keep the sandbox's runtime options: %w", err)
		}
	}
	return id, nil
}

// writeAddressFile leaves the address in the bundle (the working directory)
// for a 1.x daemon, as 1.x's own shims do: 1.x reads bundle/address to
// reconnect to its shims after a restart (2.x writes bootstrap.json itself).
func writeAddressFile(kind replyKind, address string) error {
	if kind != replyAddress {
		return nil
	}
	// Atomically: containerd may read it while a grouped start rewrites it.
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	if err := bundle.WriteFileAtomic(bundle.Bundle(wd).AddressFile(), []byte(address), 0o644); err != nil {
		return fmt.Errorf("write shim address to the bundle: %w", err)
	}
	return nil
}

// legacyDaemon reports whether the calling containerd is 1.x, which takes
// only the plain address (it rejects the version-3 JSON that 2.0-2.2 take:
// "unsupported shim version (3)"). The containerd binary (-publish-binary,
// containerd's own executable) names the module it was built from; when it
// does not (a build embedding containerd), containerd is asked for its
// version over gRPC. If neither tells, the plain address, which every line
// accepts. (Nothing is logged here: containerd reads start's stdout and
// stderr together as the reply.)
func legacyDaemon(ctx context.Context, f *flags) bool {
	if major := binaryMajor(f.publishBinary); major != 0 {
		return major == 1
	}
	if major := daemonMajor(ctx, f.address); major != 0 {
		return major == 1
	}
	return true
}

// binaryMajor is containerd's major version from the Go build information
// of its binary (main package github.com/containerd/containerd/cmd/... for
// 1.x, .../containerd/v2/cmd/... for 2.x), or 0 when it does not say.
func binaryMajor(path string) int {
	if path == "" {
		return 0
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return 0
	}
	if m := moduleMajor(bi.Path); m != 0 {
		return m
	}
	return moduleMajor(bi.Main.Path)
}

// moduleMajor is containerd's major version from a Go package or module
// path of containerd's, or 0.
func moduleMajor(p string) int {
	switch {
	case strings.HasPrefix(p, "github.com/containerd/containerd/v2/"), p == "github.com/containerd/containerd/v2":
		return 2
	case strings.HasPrefix(p, "github.com/containerd/containerd/"), p == "github.com/containerd/containerd":
		return 1
	}
	return 0
}

// serverEnv is the server's environment: containerd's, its ttrpc address,
// and the Go runtime's settings for a process that idles for the life of a
// Pod, one per Pod (docs/benchmarks.md has what each bought):
//   - GOMAXPROCS: RPCs wait on syscalls, not CPU; fewer Ps keep fewer
//     cached spans and threads.
//   - memprofilerate=0: no heap profiling. Left on, its first sampled
//     allocation (at package init) maps a 1.4 MiB bucket hash that the
//     samples' random hashing makes resident page by page; nothing reads
//     the profile. GODEBUG applies before any allocation, which setting
//     runtime.MemProfileRate in main would not.
//
// A GODEBUG containerd was given is kept; a later setting of the same key
// wins, so ours come last.
func serverEnv(environ []string, ttrpcAddress string) []string {
	env := make([]string, 0, len(environ)+3)
	godebug := "memprofilerate=0"
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			if v != "" {
				godebug = v + "," + godebug
			}
			continue
		}
		env = append(env, kv)
	}
	return append(env, "TTRPC_ADDRESS="+ttrpcAddress, "GOMAXPROCS="+serverMaxProcs, "GODEBUG="+godebug)
}

// serverMaxProcs is the server's GOMAXPROCS.
const serverMaxProcs = "2"

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

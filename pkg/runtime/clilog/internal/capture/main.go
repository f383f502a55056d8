// Command capture drives a real OCI runtime CLI (runc, crun or runsc)
// through the failures clilog.Classify has to tell apart, and writes what the
// runtime said for each, one JSON object a line: the testdata that
// classify_test.go checks the classification against. It runs the commands
// the way the backends do (--log <bundle>/log.json --log-format=json; runsc
// also --platform and --network=none), starts real containers from a
// busybox bundle and so needs root. capture.sh runs it for every runtime,
// under the heavy-run lock; by hand:
//
//	flock /work/heavy.lock go run ./pkg/runtime/clilog/internal/capture \
//	    -runtime /usr/sbin/runc -out pkg/runtime/clilog/testdata/runc-1.1.5.jsonl
//
// Everything it makes (the runtime's --root, bundles, containers, mounts)
// lives under one temporary directory, and the containers' cgroups under
// /clilog-capture in each hierarchy; all of it is force-deleted and removed
// at the end, failed run or not, and what a runtime left behind after its
// delete --force is reported. The directory's path is written as $TMP in
// the records so that a recapture only differs where the runtime does. The
// output file is replaced only by a complete capture.
package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/clilog"
)

// record is one line of the output; classify_test.go reads the same fields.
type record struct {
	Runtime   string   `json:"runtime"`   // runc, crun, runsc
	Version   string   `json:"version"`   // first line of --version (and the Go module version if any)
	Case      string   `json:"case"`      // unique name: op/condition, with a variant where there are several
	Op        string   `json:"op"`        // clilog.Classify's op
	Condition string   `json:"condition"` // the state or input that makes op fail
	Args      []string `json:"args"`      // the command after the global flags
	Exit      int      `json:"exit"`      // 0: the runtime did not fail
	Stderr    string   `json:"stderr,omitempty"`
	Log       string   `json:"log,omitempty"` // the last error the command wrote to --log
}

func main() {
	bin := flag.String("runtime", "", "runtime binary: runc, crun or runsc (path or name on PATH)")
	out := flag.String("out", "", "output file (JSON lines); default stdout")
	platform := flag.String("platform", "systrap", "runsc --platform (systrap or ptrace; kvm hangs on this VM)")
	busybox := flag.String("busybox", "/bin/busybox", "a static busybox for the bundle's rootfs")
	refusal := flag.String("host-refusal", "", "skip the cases whose failure contains this: the host refuses every container "+
		"(crun 1.8 on a cgroup v1 hybrid host: \"cgroups in hybrid mode not supported\")")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "capture: -runtime is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// A reader of the progress lines that goes away (| head) must not
	// kill the capture before its cleanup.
	signal.Ignore(syscall.SIGPIPE)
	err := run(ctx, *bin, *out, *platform, *busybox, *refusal)
	stop() // not deferred: os.Exit skips deferred calls
	if err != nil {
		fmt.Fprintln(os.Stderr, "capture:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin, out, platform, busybox, refusal string) (retErr error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return err
	}
	path, err = filepath.Abs(path)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "clilog-capture-")
	if err != nil {
		return err
	}
	d := &driver{bin: path, name: filepath.Base(path), dir: dir, root: filepath.Join(dir, "root")}
	d.family = clilog.Runc
	if d.name == "runsc" {
		d.family = clilog.Runsc
		d.extra = []string{"--platform=" + platform, "--network=none", "--oci-seccomp=true"}
	}
	defer func() {
		if err := d.cleanup(); err != nil && retErr == nil {
			retErr = err
		}
	}()
	if err := d.prepare(busybox); err != nil {
		return err
	}
	var w io.Writer = os.Stdout
	if out != "" {
		f, err := os.CreateTemp(filepath.Dir(out), ".capture-*")
		if err != nil {
			return err
		}
		defer func() {
			err := f.Close()
			if err == nil && retErr == nil {
				err = os.Rename(f.Name(), out)
			}
			if err != nil && retErr == nil {
				retErr = err
			}
			if retErr != nil {
				_ = os.Remove(f.Name()) // best effort: retErr is what to report
			}
		}()
		w = f
	}
	skipped := 0
	defer func() {
		if skipped > 0 {
			fmt.Fprintf(os.Stderr, "%d cases skipped: the host refuses them (-host-refusal)\n", skipped)
		}
	}()
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for i, c := range cases(d.family) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rs, err := d.capture(ctx, fmt.Sprintf("cap%02d", i), c)
		var serr setupError
		if errors.As(err, &serr) && refusal != "" && strings.Contains(err.Error(), refusal) {
			skipped++
			fmt.Fprintf(os.Stderr, "%-34s skipped: %v\n", c.name, err)
			continue
		}
		if err != nil {
			return fmt.Errorf("case %s: %w", c.name, err)
		}
		for _, r := range rs {
			if refusal != "" && strings.Contains(r.Log+r.Stderr, refusal) {
				skipped++
				fmt.Fprintf(os.Stderr, "%-34s skipped: the host refuses it: %s\n", r.Case, refusal)
				continue
			}
			fmt.Fprintf(os.Stderr, "%-34s exit %-3d %s\n", r.Case, r.Exit, oneLine(firstNonEmpty(r.Log, r.Stderr)))
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// A condition brings a fresh container to the state a case needs.
type condition string

const (
	missing condition = "missing" // never created
	created condition = "created" // created, not started
	running condition = "running"
	paused  condition = "paused"
	stopped condition = "stopped" // started, its init killed and reaped
)

// kase is one failure to provoke: op on a container in condition, or a bad
// input (spec, flag, value) for which the container is created fresh.
type kase struct {
	name      string
	op        string
	condition string
	state     condition                   // the container's state before the command
	spec      func(s *specs.Spec)         // changes to the bundle's config.json
	rawSpec   string                      // config.json verbatim instead
	args      func(c *container) []string // the command
	stdin     string                      // for update
	global    []string                    // extra global flags
	only      clilog.Family               // run for this family only ("": both)
}

func cases(f clilog.Family) []kase {
	var cs []kase
	add := func(k kase) {
		if k.only != "" && k.only != f {
			return
		}
		if k.condition == "" {
			k.condition = string(k.state)
		}
		if k.name == "" {
			k.name = k.op + "/" + k.condition
		}
		cs = append(cs, k)
	}
	// A container that does not exist, for every op that names one.
	for _, op := range []string{"start", "kill", "kill-all", "delete", "delete-force", "pause", "resume",
		"exec", "ps", "events", "update", "state", "checkpoint"} {
		add(kase{op: opName(op), name: op + "/missing", state: missing, args: opArgs(f, op)})
	}
	add(kase{op: "wait", state: missing, args: opArgs(f, "wait"), only: clilog.Runsc})
	// The id is taken, whatever the container's state.
	for _, st := range []condition{created, running, stopped} {
		add(kase{op: "create", condition: "exists-" + string(st), state: st, args: opArgs(f, "create")})
	}
	// Wrong state for the operation.
	for _, c := range []struct {
		op string
		st condition
	}{
		{"pause", created}, {"resume", created}, {"exec", created}, {"events", created}, {"checkpoint", created},
		{"start", running}, {"resume", running}, {"delete", running},
		{"pause", paused}, {"start", paused}, {"exec", paused}, {"delete", paused},
		{"kill", stopped}, {"kill-all", stopped}, {"start", stopped}, {"pause", stopped}, {"resume", stopped},
		{"exec", stopped}, {"ps", stopped}, {"events", stopped}, {"update", stopped}, {"checkpoint", stopped},
	} {
		add(kase{op: opName(c.op), name: c.op + "/" + string(c.st), state: c.st, args: opArgs(f, c.op)})
	}
	// Bad input: flags, values, config.json.
	add(kase{op: "kill", name: "kill/unknown-flag", condition: "unknown-flag", state: running,
		args: func(c *container) []string { return []string{"kill", "--no-such-flag", c.id, "9"} }})
	add(kase{op: "create", name: "create/unknown-global-flag", condition: "unknown-flag", state: missing,
		global: []string{"--no-such-flag"}, args: opArgs(f, "create")})
	add(kase{op: "create", name: "create/invalid-flag-value", condition: "invalid-value", state: missing,
		global: []string{"--debug=maybe"}, args: opArgs(f, "create")})
	add(kase{op: "create", name: "create/invalid-network", condition: "invalid-value", state: missing,
		global: []string{"--network=no-such-network"}, args: opArgs(f, "create"), only: clilog.Runsc})
	add(kase{op: "create", name: "create/invalid-platform", condition: "invalid-value", state: missing,
		global: []string{"--platform=no-such-platform"}, args: opArgs(f, "create"), only: clilog.Runsc})
	add(kase{op: "kill", name: "kill/invalid-signal", condition: "invalid-value", state: running,
		args: func(c *container) []string { return []string{"kill", c.id, "NOSUCHSIG"} }})
	add(kase{op: "update", name: "update/invalid-resources", condition: "invalid-value", state: running,
		args: opArgs(f, "update"), stdin: "{not json"})
	for _, b := range []struct {
		name string
		spec func(s *specs.Spec)
		raw  string
	}{
		{name: "invalid-json", raw: `{"ociVersion": "1.0.2", "process": {`},
		{name: "no-process", spec: func(s *specs.Spec) { s.Process = nil }},
		{name: "empty-args", spec: func(s *specs.Spec) { s.Process.Args = nil }},
		{name: "relative-cwd", spec: func(s *specs.Spec) { s.Process.Cwd = "relative/dir" }},
		{name: "unknown-namespace", spec: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "no-such-namespace"})
		}},
		{name: "missing-rootfs", spec: func(s *specs.Spec) { s.Root.Path += "-does-not-exist" }},
		{name: "missing-executable", spec: func(s *specs.Spec) { s.Process.Args = []string{"no-such-executable"} }},
		{name: "relative-mount-destination", spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "relative", Type: "tmpfs", Source: "tmpfs"})
		}},
		{name: "unknown-mount-type", spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/mnt", Type: "no-such-fs", Source: "none"})
		}},
	} {
		add(kase{op: "create", name: "create/spec-" + b.name, condition: "bad-spec", state: missing,
			spec: b.spec, rawSpec: b.raw, args: opArgs(f, "create")})
	}
	// Features this runtime or host does not have.
	add(kase{op: "create", name: "create/spec-intel-rdt", condition: "unsupported", state: missing,
		spec: func(s *specs.Spec) {
			s.Linux.IntelRdt = &specs.LinuxIntelRdt{ClosID: "capture", L3CacheSchema: "L3:0=f"}
		}, args: opArgs(f, "create"), only: clilog.Runc})
	add(kase{op: "create", name: "create/spec-selinux-label", condition: "unsupported", state: missing,
		spec: func(s *specs.Spec) { s.Process.SelinuxLabel = "system_u:system_r:container_t:s0" }, args: opArgs(f, "create")})
	// runsc refuses shared bind mounts (they would leak the sandbox's
	// mounts to the host); runc would make one, so runsc only.
	add(kase{op: "create", name: "create/spec-shared-bind-mount", condition: "unsupported", state: missing,
		spec: func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/mnt", Type: "bind",
				Source: filepath.Join(s.Root.Path, "tmp"), Options: []string{"rbind", "rshared"}})
		}, args: opArgs(f, "create"), only: clilog.Runsc})
	// A pod's container whose sandbox is gone, or not named (CRI
	// annotations, which only runsc reads).
	add(kase{op: "create", name: "create/sub-container-missing-sandbox", condition: "missing-sandbox", state: missing,
		spec: func(s *specs.Spec) {
			s.Annotations = map[string]string{
				"io.kubernetes.cri.container-type": "container",
				"io.kubernetes.cri.sandbox-id":     "no-such-sandbox",
			}
		}, args: opArgs(f, "create"), only: clilog.Runsc})
	add(kase{op: "create", name: "create/spec-sub-container-no-sandbox-id", condition: "bad-spec", state: missing,
		spec: func(s *specs.Spec) {
			s.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container"}
		}, args: opArgs(f, "create"), only: clilog.Runsc})
	add(kase{op: "create", name: "create/spec-time-namespace", condition: "unsupported", state: missing,
		spec: func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.TimeNamespace})
		}, args: opArgs(f, "create")})
	return cs
}

// opName maps a case's command variant to Classify's op.
func opName(variant string) string {
	switch variant {
	case "kill-all":
		return "kill"
	case "delete-force":
		return "delete"
	}
	return variant
}

// opArgs is the command each backend runs for op (pkg/runtime/runc through
// go-runc, pkg/runtime/runsc by hand).
func opArgs(f clilog.Family, op string) func(c *container) []string {
	return func(c *container) []string {
		switch op {
		case "create":
			return []string{"create", "--bundle", c.bundle, "--pid-file", filepath.Join(c.bundle, "init.pid"), c.id}
		case "start", "pause", "resume", "state", "wait":
			return []string{op, c.id}
		case "kill":
			return []string{"kill", c.id, "9"}
		case "kill-all":
			return []string{"kill", "--all", c.id, "9"}
		case "delete":
			return []string{"delete", c.id}
		case "delete-force":
			return []string{"delete", "--force", c.id}
		case "exec":
			args := []string{"exec", "--process", c.process, "--detach", "--pid-file", filepath.Join(c.bundle, "exec.pid")}
			if f == clilog.Runsc {
				args = append(args, "--internal-pid-file", filepath.Join(c.bundle, "exec.pid.internal"))
			}
			return append(args, c.id)
		case "ps":
			return []string{"ps", "--format", "json", c.id}
		case "events":
			return []string{"events", "--stats", c.id}
		case "update":
			return []string{"update", "--resources", "-", c.id}
		case "checkpoint":
			return []string{"checkpoint", "--image-path", filepath.Join(c.bundle, "image"), "--leave-running", c.id}
		}
		panic("capture: no command for op " + op)
	}
}

// driver runs one runtime binary with the backends' global flags.
type driver struct {
	bin     string
	name    string
	family  clilog.Family
	extra   []string // runsc's --platform, --network
	dir     string   // everything made lives here
	root    string   // the runtime's --root
	rootfs  string
	version string
	made    []*container
}

type container struct {
	id      string
	bundle  string
	log     string
	process string // an exec's process.json
}

type result struct {
	exit   int
	stderr string
	log    string
}

func (d *driver) prepare(busybox string) error {
	out, err := exec.Command(d.bin, "--version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s --version: %w: %s", d.bin, err, out)
	}
	d.version, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	if bi, err := buildinfo.ReadFile(d.bin); err == nil && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		d.version += " (" + bi.Main.Path + " " + bi.Main.Version + ")"
	}
	d.rootfs = filepath.Join(d.dir, "rootfs")
	for _, sub := range []string{"bin", "proc", "dev", "sys", "tmp", "mnt"} {
		if err := os.MkdirAll(filepath.Join(d.rootfs, sub), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.rootfs, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	for _, applet := range []string{"sh", "sleep", "true"} {
		if err := os.Symlink("busybox", filepath.Join(d.rootfs, "bin", applet)); err != nil {
			return err
		}
	}
	return os.MkdirAll(d.root, 0o700)
}

// cgroupParent holds the containers' cgroups, below each hierarchy's root.
const cgroupParent = "clilog-capture"

func (d *driver) spec(id string) *specs.Spec {
	return &specs.Spec{
		Version: "1.0.2-dev", // what crun 1.8 and Debian's runsc accept too
		Process: &specs.Process{
			Args: []string{"sleep", "3600"},
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
		},
		Root:     &specs.Root{Path: d.rootfs},
		Hostname: "capture",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			// Under a parent of our own, so that what a runtime leaves
			// behind is found (and removed) by name.
			CgroupsPath: "/" + cgroupParent + "/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
		},
	}
}

// newContainer writes a bundle for id; the container itself is made by
// reach.
func (d *driver) newContainer(id string, k kase) (*container, error) {
	c := &container{id: id, bundle: filepath.Join(d.dir, "bundles", id)}
	c.log = filepath.Join(c.bundle, "log.json")
	c.process = filepath.Join(c.bundle, "process.json")
	if err := os.MkdirAll(c.bundle, 0o755); err != nil {
		return nil, err
	}
	data := []byte(k.rawSpec)
	if k.rawSpec == "" {
		s := d.spec(id)
		if k.spec != nil {
			k.spec(s)
		}
		var err error
		if data, err = json.MarshalIndent(s, "", "\t"); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(c.bundle, "config.json"), data, 0o644); err != nil {
		return nil, err
	}
	proc, err := json.Marshal(specs.Process{Args: []string{"true"}, Env: []string{"PATH=/bin"}, Cwd: "/"})
	if err != nil {
		return nil, err
	}
	return c, os.WriteFile(c.process, proc, 0o644)
}

// globalFlags are those the backends pass before every subcommand.
func (d *driver) globalFlags(c *container) []string {
	if d.family == clilog.Runsc {
		return append([]string{"--root=" + d.root, "--log=" + c.log, "--log-format=json"}, d.extra...)
	}
	return append([]string{"--root", d.root, "--log", c.log, "--log-format", "json"}, d.extra...)
}

// cmd runs one command. stdout and stderr are files, not pipes: a detached
// container inherits them and would hold a pipe open past the command.
func (d *driver) cmd(ctx context.Context, c *container, global []string, stdin string, args ...string) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	off := clilog.Size(c.log)
	full := append(append(d.globalFlags(c), global...), args...)
	cmd := exec.CommandContext(ctx, d.bin, full...)
	cmd.Dir = c.bundle
	errf, err := os.CreateTemp(d.dir, "stderr-")
	if err != nil {
		return result{}, err
	}
	defer os.Remove(errf.Name())
	defer errf.Close()
	// stdout is command output (ps, events) or usage text, neither of
	// which the backends classify.
	cmd.Stderr = errf
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err = cmd.Run()
	var r result
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.exit = ee.ExitCode()
	default:
		return result{}, fmt.Errorf("%s %s: %w", d.name, strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		return result{}, fmt.Errorf("%s %s: timed out", d.name, strings.Join(args, " "))
	}
	data, err := os.ReadFile(errf.Name())
	if err != nil {
		return result{}, err
	}
	r.stderr = strings.TrimSpace(string(data))
	r.log = clilog.LastError(c.log, off)
	return r, nil
}

// must runs a command that sets a case up; its failure ends the capture.
func (d *driver) must(ctx context.Context, c *container, args ...string) error {
	r, err := d.cmd(ctx, c, nil, "", args...)
	if err != nil {
		return err
	}
	if r.exit != 0 {
		return setupError(fmt.Sprintf("%s %s: exit %d: %s", d.name, args[0], r.exit, firstNonEmpty(r.log, r.stderr)))
	}
	return nil
}

// setupError is the runtime's refusal to bring a container to a case's
// state.
type setupError string

func (e setupError) Error() string { return "setup: " + string(e) }

// reach brings a fresh container to state st.
func (d *driver) reach(ctx context.Context, c *container, st condition) error {
	if st == missing {
		return nil
	}
	d.made = append(d.made, c)
	if err := d.must(ctx, c, opArgs(d.family, "create")(c)...); err != nil {
		return err
	}
	if st == created {
		return nil
	}
	if err := d.must(ctx, c, "start", c.id); err != nil {
		return err
	}
	switch st {
	case paused:
		return d.must(ctx, c, "pause", c.id)
	case stopped:
		if err := d.must(ctx, c, "kill", c.id, "9"); err != nil {
			return err
		}
		return d.waitStopped(ctx, c)
	}
	return nil
}

func (d *driver) waitStopped(ctx context.Context, c *container) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		cmd := exec.CommandContext(ctx, d.bin, append(d.globalFlags(c), "state", c.id)...)
		out, err := cmd.Output()
		if err == nil {
			var s struct {
				Status string `json:"status"`
			}
			if json.Unmarshal(out, &s) == nil && s.Status == "stopped" {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("container %s did not stop", c.id)
}

// capture runs case k on a fresh container id. A bad or unsupported spec
// that create accepts is started as well: runsc reads much of the spec only
// then, and the start's failure is recorded as a case of its own.
func (d *driver) capture(ctx context.Context, id string, k kase) ([]record, error) {
	c, err := d.newContainer(id, k)
	if err != nil {
		return nil, err
	}
	// Each case gets a fresh container; this one is done after it, and
	// nothing of it may outlive its delete.
	defer func() {
		d.remove(c)
		for _, pid := range killLeftovers(d.dir) {
			fmt.Fprintf(os.Stderr, "%-34s process %d still ran after delete --force; killed\n", k.name, pid)
		}
		for _, cg := range removeCgroups(id) {
			fmt.Fprintf(os.Stderr, "%-34s cgroup %s was left after delete --force; removed\n", k.name, cg)
		}
	}()
	if err := d.reach(ctx, c, k.state); err != nil {
		return nil, err
	}
	if k.op == "create" {
		d.made = append(d.made, c) // a failed create can leave state behind
	}
	args := k.args(c)
	stdin := k.stdin
	if stdin == "" && k.op == "update" {
		stdin = `{"cpu": {"shares": 512}}`
	}
	r, err := d.cmd(ctx, c, k.global, stdin, args...)
	if err != nil {
		return nil, err
	}
	rs := []record{d.record(k.name, k.op, k.condition, args, r)}
	if k.op == "create" && r.exit == 0 && (k.condition == "bad-spec" || k.condition == "unsupported") {
		args := []string{"start", c.id}
		r, err := d.cmd(ctx, c, k.global, "", args...)
		if err != nil {
			return nil, err
		}
		rs = append(rs, d.record("start/"+strings.TrimPrefix(k.name, "create/"), "start", k.condition, args, r))
	}
	return rs, nil
}

func (d *driver) record(name, op, condition string, args []string, r result) record {
	hide := func(s string) string { return strings.ReplaceAll(s, d.dir, "$TMP") }
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = hide(a)
	}
	return record{
		Runtime:   d.name,
		Version:   d.version,
		Case:      name,
		Op:        op,
		Condition: condition,
		Args:      shown,
		Exit:      r.exit,
		Stderr:    hide(r.stderr),
		Log:       hide(r.log),
	}
}

// remove force-deletes c, as the backends' Delete does.
func (d *driver) remove(c *container) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Best effort: cleanup reports what is left.
	_ = exec.CommandContext(ctx, d.bin, append(d.globalFlags(c), "delete", "--force", c.id)...).Run()
}

// cleanup removes every container made, processes and cgroups they left
// (reported: there should be none once the containers are deleted), the
// mounts runsc leaves in its root (null-netns) and anything else still
// mounted under the directory, then the directory.
func (d *driver) cleanup() error {
	for _, c := range d.made {
		d.remove(c)
	}
	for _, pid := range killLeftovers(d.dir) {
		fmt.Fprintf(os.Stderr, "process %d still ran from %s after delete --force; killed\n", pid, d.dir)
	}
	for _, cg := range removeCgroups("") {
		fmt.Fprintf(os.Stderr, "cgroup %s was left after delete --force; removed\n", cg)
	}
	var errs []error
	if left, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupParent); len(left) > 0 {
		errs = append(errs, fmt.Errorf("cgroups not empty, not removed: %s", strings.Join(left, " ")))
	}
	for _, m := range mountsUnder(d.dir) {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeCgroups removes the (empty) cgroups of container id, or with ""
// everything under cgroupParent and the parent itself, in every hierarchy
// (cgroup v1 controllers, the hybrid unified one, a v2 root). It returns
// those that held a container's cgroup.
func removeCgroups(id string) []string {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupParent)
	if _, err := os.Stat("/sys/fs/cgroup/" + cgroupParent); err == nil {
		roots = append(roots, "/sys/fs/cgroup/"+cgroupParent)
	}
	var left []string
	for _, root := range roots {
		top := root
		if id != "" {
			top = filepath.Join(root, id)
		}
		var dirs []string
		// Never fails: the callback skips what it cannot read.
		_ = filepath.WalkDir(top, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err == nil && dirs[i] != root {
				left = append(left, dirs[i])
			}
		}
	}
	return left
}

// mountsUnder lists mount points below dir, deepest first.
func mountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var ms []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			ms = append([]string{f[4]}, ms...)
		}
	}
	return ms
}

// killLeftovers kills the processes whose command line names dir (they are
// ours: dir is this run's) and waits a little for them to go, so that their
// cgroups can be removed. It returns their pids.
func killLeftovers(dir string) []int {
	pids := leftoverProcesses(dir)
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGKILL) // it may be gone already; the wait below tells
	}
	for i := 0; i < 50 && len(pids) > 0 && len(leftoverProcesses(dir)) > 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	return pids
}

// leftoverProcesses lists processes whose command line names dir.
func leftoverProcesses(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, []byte(dir)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func oneLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 110 {
		s = s[:110] + "…"
	}
	return s
}

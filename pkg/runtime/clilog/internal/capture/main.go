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
	"context"
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

	specs "github.com/opencontainers/runtime-spec/specs-go"

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

// cgroupParent holds the containers' cgroups, below each hierarchy's root.
const cgroupParent = "clilog-capture"

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

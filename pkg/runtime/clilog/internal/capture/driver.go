package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/clilog"
)

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

package clilog

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// captured is one line of testdata/*.jsonl, written by internal/capture
// from a real runtime.
type captured struct {
	Runtime   string   `json:"runtime"`
	Version   string   `json:"version"`
	Case      string   `json:"case"`
	Op        string   `json:"op"`
	Condition string   `json:"condition"`
	Args      []string `json:"args"`
	Exit      int      `json:"exit"`
	Stderr    string   `json:"stderr"`
	Log       string   `json:"log"`
}

// contract is the kind each captured condition must get, whatever the
// runtime: what the backends promise in pkg/runtime.Backend and what
// containerd's callers act on.
func contract(op, condition string) error {
	switch condition {
	case "missing":
		return errdefs.ErrNotFound
	case "exists-created", "exists-running", "exists-stopped":
		return errdefs.ErrAlreadyExists
	case "stopped":
		switch op {
		case "kill", "ps", "events", "state", "delete", "wait":
			// The process already finished: CRI's StopContainer treats
			// NotFound from Kill as "already stopped".
			return errdefs.ErrNotFound
		}
		return errdefs.ErrFailedPrecondition
	case "created", "running", "paused":
		return errdefs.ErrFailedPrecondition
	case "unknown-flag", "invalid-value", "bad-spec":
		return errdefs.ErrInvalidArgument
	case "unsupported":
		return errdefs.ErrNotImplemented
	case "missing-sandbox":
		// A pod's sandbox that is gone: the pod has to be recreated, the
		// container cannot be created in the state things are in.
		return errdefs.ErrFailedPrecondition
	}
	return fmt.Errorf("no contract for condition %q", condition)
}

// errNoKind marks a captured failure whose words name no condition the
// contract covers; the backend passes the runtime's message on.
var errNoKind = errors.New("no kind")

// exceptions are the captured failures whose words cannot follow the
// contract, keyed by "<testdata file> <case>": the kind they get instead,
// and why. Each must still match a captured case.
func exceptions() map[string]error {
	return map[string]error{
		// crun has no events or checkpoint command; the runc backend
		// reads the cgroup for stats and checkpoints only with runc.
		"crun-1.8.1 events/missing":     errdefs.ErrNotImplemented,
		"crun-1.8.1 checkpoint/missing": errdefs.ErrNotImplemented,
		// An SELinux label on a host without SELinux: crun reports the
		// EINVAL of a /proc write (runc ignores the label, runsc says
		// "not supported").
		"crun-1.8.1 create/spec-selinux-label": errNoKind,
		// crun's time namespace on this kernel: "write to sync socket:
		// Broken pipe" or nothing at all, run to run.
		"crun-1.8.1 create/spec-time-namespace": errNoKind,
		// runc 1.1 predates time namespaces and words it like a bogus
		// namespace type: "namespace {"time" ""} does not exist".
		"runc-1.1.5 create/spec-time-namespace": errdefs.ErrInvalidArgument,
		// runsc update on a stopped container dies of a nil pointer.
		"runsc-20260905 update/stopped": errNoKind,
		// runsc events --stats says nothing once the sandbox is gone: its
		// warning goes to the debug log only. The runsc backend falls back
		// to the host cgroup's figures.
		"runsc-20260905 events/stopped": errNoKind,
		// Debian 12's 2022 runsc has no update command: it prints its
		// top-level usage.
		"runsc-20221219-debian update/missing":           errdefs.ErrNotImplemented,
		"runsc-20221219-debian update/stopped":           errdefs.ErrNotImplemented,
		"runsc-20221219-debian update/invalid-resources": errdefs.ErrNotImplemented,
		"runsc-20221219-debian events/stopped":           errNoKind, // as today's runsc
		// Its bugs: events on a created container divides by zero,
		// checkpoint of one fails inside the sandbox, and a missing rootfs
		// kills the sandbox before it reports.
		"runsc-20221219-debian events/created":             errNoKind,
		"runsc-20221219-debian checkpoint/created":         errNoKind,
		"runsc-20221219-debian create/spec-missing-rootfs": errNoKind,
	}
}

func TestClassifyCaptured(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no captured messages in testdata")
	}
	except := exceptions()
	seen := map[string]bool{}
	for _, file := range files {
		capture := strings.TrimSuffix(filepath.Base(file), ".jsonl")
		for _, r := range readCaptured(t, file) {
			family := Runc
			if r.Runtime == "runsc" {
				family = Runsc
			}
			key := capture + " " + r.Case
			want, ok := except[key]
			if ok {
				seen[key] = true
			} else {
				want = contract(r.Op, r.Condition)
			}
			if r.Exit == 0 {
				// The runtime did not refuse (runc pauses a created
				// container); nothing to classify.
				continue
			}
			// The backends classify runsc's stderr, else its log; runc's
			// log, else its output. Each must give the same kind. A
			// failure without a word is classified as "".
			msgs := []struct{ from, msg string }{{"log", r.Log}, {"stderr", r.Stderr}}
			if r.Log == "" && r.Stderr == "" {
				msgs = []struct{ from, msg string }{{"silent", ""}}
			}
			for _, m := range msgs {
				if m.msg == "" && m.from != "silent" {
					continue
				}
				t.Run(capture+"/"+r.Case+"/"+m.from, func(t *testing.T) {
					got := Classify(family, r.Op, m.msg)
					if errors.Is(want, errNoKind) {
						if got != nil {
							t.Errorf("Classify(%s, %q, %q) = %v, want no kind", family, r.Op, short(m.msg), got)
						}
						return
					}
					if !errors.Is(got, want) {
						t.Errorf("Classify(%s, %q, %q) = %v, want %v", family, r.Op, short(m.msg), got, want)
					}
				})
			}
		}
	}
	for k := range except {
		if !seen[k] {
			t.Errorf("exception %q matches no captured case", k)
		}
	}
}

// short is a message's first line, marked when more follows.
func short(msg string) string {
	first, rest, _ := strings.Cut(msg, "\n")
	if rest != "" {
		first += " …"
	}
	return first
}

func readCaptured(t *testing.T, file string) []captured {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rs []captured
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r captured
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if r.Runtime == "" || r.Version == "" || r.Op == "" || r.Case == "" {
			t.Fatalf("%s: incomplete record %s", file, sc.Bytes())
		}
		rs = append(rs, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestClassify names the contract's cases, with the runtimes' own words.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		family Family
		op     string
		msg    string
		want   error // nil: no kind
	}{
		// The same condition, the same kind on both families.
		{"runc kill of a missing container", Runc, "kill", "container does not exist", errdefs.ErrNotFound},
		{"runsc kill of a missing container", Runsc, "kill", "FetchSpec failed: loading container: file does not exist", errdefs.ErrNotFound},
		{"runc delete of a missing container (Delete stays idempotent)", Runc, "delete", "container does not exist", errdefs.ErrNotFound},
		{"runsc delete of a missing container", Runsc, "delete", `loading container "c1": file does not exist`, errdefs.ErrNotFound},
		{"crun kill of a missing container", Runc, "kill", "error opening file `/run/crun/c1/status`: No such file or directory", errdefs.ErrNotFound},
		{"runc create twice", Runc, "create", "runc create failed: container with given ID already exists", errdefs.ErrAlreadyExists},
		{"runsc create twice", Runsc, "create", "creating container: cannot lock container metadata file: container already exists", errdefs.ErrAlreadyExists},
		{"runc kill of a stopped container is 'already stopped'", Runc, "kill", "container not running", errdefs.ErrNotFound},
		{"runsc kill of a stopped container is 'already stopped'", Runsc, "kill", "sandbox is not running", errdefs.ErrNotFound},
		{"runsc 2022 kill of a stopped container", Runsc, "kill", "connecting to control server at PID 42: connection refused", errdefs.ErrNotFound},
		{"runsc kill of a container that just stopped", Runsc, "kill", `signaling container "c1": signaling process in container "c1" PID 1: no such process`, errdefs.ErrNotFound},
		{"runc events of a stopped container", Runc, "events", "container with id c1 is not running", errdefs.ErrNotFound},
		{"runsc ps of a stopped container", Runsc, "ps", "getting processes for container: retrieving process data from sandbox: connecting to control server at PID 42: connection refused", errdefs.ErrNotFound},
		{"runsc 2022 ps of a stopped container", Runsc, "ps", `getting processes for container: cannot get processes of container "c1" in state stopped`, errdefs.ErrNotFound},

		// The same words, another op: wrong state, not gone.
		{"runc pause of a stopped container", Runc, "pause", "container not running", errdefs.ErrFailedPrecondition},
		{"runsc pause of a stopped container", Runsc, "pause", `pause failed: pausing container "c1": pausing container "c1": connecting to control server at PID 42: connection refused`, errdefs.ErrFailedPrecondition},
		{"runc pause of a paused container", Runc, "pause", "container not running", errdefs.ErrFailedPrecondition},
		{"runsc pause of a paused container", Runsc, "pause", `pause failed: cannot pause container "c1" in state paused`, errdefs.ErrFailedPrecondition},
		{"runsc pause of a created container panics", Runsc, "pause", "panic: invalid state transition: created => paused\n\ngoroutine 1 [running]:", errdefs.ErrFailedPrecondition},
		{"runc resume of a running container", Runc, "resume", "container not paused", errdefs.ErrFailedPrecondition},
		{"runsc resume of a running container", Runsc, "resume", `resume failed: cannot resume container "c1" in state running`, errdefs.ErrFailedPrecondition},
		{"runc exec in a stopped container", Runc, "exec", "exec failed: cannot exec in a stopped container", errdefs.ErrFailedPrecondition},
		{"runsc exec in a stopped container", Runsc, "exec", `executing processes for container: cannot execute in container "c1" in state stopped`, errdefs.ErrFailedPrecondition},
		{"runc exec in a paused container", Runc, "exec", "exec failed: cannot exec in a paused container (use --ignore-paused to override)", errdefs.ErrFailedPrecondition},
		{"runsc exec in a created container", Runsc, "exec", `executing processes for container: executing command "true" in sandbox: container "c1" not started`, errdefs.ErrFailedPrecondition},
		{"runc start of a running container", Runc, "start", "cannot start an already running container", errdefs.ErrFailedPrecondition},
		{"runsc start of a running container", Runsc, "start", `starting container: cannot start container "c1" in state running`, errdefs.ErrFailedPrecondition},
		{"runc delete of a running container without force", Runc, "delete", "cannot delete container c1 that is not stopped: running", errdefs.ErrFailedPrecondition},
		{"runsc delete of a running container without force", Runsc, "delete", "cannot delete container that is not stopped without --force flag", errdefs.ErrFailedPrecondition},
		{"runsc create in a pod whose sandbox is gone", Runsc, "create", "creating container: cannot load sandbox: open /run/runsc/s1_sandbox:s1.state: no such file or directory", errdefs.ErrFailedPrecondition},

		// Bad input.
		{"runc unknown flag", Runc, "kill", "flag provided but not defined: -no-such-flag", errdefs.ErrInvalidArgument},
		{"runsc unknown flag", Runsc, "kill", "flag provided but not defined: -no-such-flag\nkill <container id> [signal]", errdefs.ErrInvalidArgument},
		{"runsc invalid flag value", Runsc, "create", `invalid value "x" for flag -network: invalid network type "x"`, errdefs.ErrInvalidArgument},
		{"runsc unknown platform", Runsc, "create", "creating container: cannot create sandbox: cannot create sandbox process: cannot look up platform: unknown platform: x", errdefs.ErrInvalidArgument},
		{"runc unknown signal", Runc, "kill", `unknown signal "NOSUCHSIG"`, errdefs.ErrInvalidArgument},
		{"runsc unknown signal", Runsc, "kill", `unknown signal "NOSUCHSIG"`, errdefs.ErrInvalidArgument},
		{"runc bad config.json", Runc, "create", "runc create failed: args must not be empty", errdefs.ErrInvalidArgument},
		{"runsc bad config.json", Runsc, "create", "FetchSpec failed: reading spec: Spec.Process.Arg must be defined: &{Terminal:false}", errdefs.ErrInvalidArgument},
		{"runc create: an unknown namespace 'does not exist' but is no NotFound", Runc, "create", `runc create failed: namespace {"x" ""} does not exist`, errdefs.ErrInvalidArgument},
		{"runc missing rootfs", Runc, "create", "runc create failed: invalid rootfs: stat /b/rootfs: no such file or directory", errdefs.ErrInvalidArgument},
		{"runsc missing rootfs", Runsc, "create", `creating container: cannot create gofer process: error initializing gofer confs: failed to stat mount "/b/rootfs" to see if it were a directory: stat /b/rootfs: no such file or directory`, errdefs.ErrInvalidArgument},
		{"runc missing executable", Runc, "create", `runc create failed: unable to start container process: exec: "x": executable file not found in $PATH`, errdefs.ErrInvalidArgument},
		{"runsc missing executable", Runsc, "start", `starting container: starting root container: starting sandbox: error finding executable "x" in PATH [/bin]: no such file or directory`, errdefs.ErrInvalidArgument},

		// Not supported.
		{"runc intelRdt without RDT", Runc, "create", "runc create failed: intelRdt.l3CacheSchema is specified in config, but Intel RDT/CAT is not enabled", errdefs.ErrNotImplemented},
		{"runsc SELinux label", Runsc, "create", "FetchSpec failed: reading spec: SELinux is not supported: system_u:system_r:container_t:s0", errdefs.ErrNotImplemented},
		{"crun without a command", Runc, "checkpoint", "unknown command checkpoint", errdefs.ErrNotImplemented},
		{"runsc without a command", Runsc, "update", "Usage: runsc <flags> <subcommand> <subcommand args>\n\nSubcommands:", errdefs.ErrNotImplemented},

		// go-runc's error when runc logged nothing: "exit status 1: <output>".
		{"runc's output through go-runc", Runc, "kill", "exit status 1: container does not exist", errdefs.ErrNotFound},

		// runsc's words read in its source (gVisor 20260905), not provoked
		// by the capture.
		{"runsc wait once the sandbox is gone", Runsc, "wait", "sandbox no longer running and its exit status is unavailable", errdefs.ErrNotFound},
		{"runsc kill of a container the sandbox does not know", Runsc, "kill", `signaling container: container "c1" not found`, errdefs.ErrNotFound},
		{"runsc flag annotation it does not know", Runsc, "create", `creating container: unknown flag "no-such-flag"`, errdefs.ErrInvalidArgument},

		// No kind: the caller wraps the runtime's message.
		{"empty", Runc, "kill", "", nil},
		{"runc: words of no condition", Runc, "create", "runc create failed: unable to apply cgroup configuration: permission denied", nil},
		{"runsc: words of no condition", Runsc, "create", "creating container: cannot create sandbox: cannot read client sync file: waiting for sandbox to start: EOF", nil},
		{"only the first line is read (a panic's stack)", Runsc, "update",
			"panic: runtime error: invalid memory address or nil pointer dereference\ngvisor.dev/gvisor/runsc/container.(*Container).loadContainer: container does not exist", nil},
		{"only the first line is read (usage text)", Runc, "kill",
			"Incorrect Usage: flag provided but not defined: -x\n\nNAME:\n   runc kill - the container does not exist", errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Classify(tc.family, tc.op, tc.msg)
			if tc.want == nil {
				if got != nil {
					t.Fatalf("Classify(%s, %q, %q) = %v, want no kind", tc.family, tc.op, short(tc.msg), got)
				}
				return
			}
			if !errors.Is(got, tc.want) {
				t.Fatalf("Classify(%s, %q, %q) = %v, want %v", tc.family, tc.op, short(tc.msg), got, tc.want)
			}
		})
	}
}

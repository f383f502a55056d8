// Package bundle names the files of a task's bundle directory: what
// containerd puts there (config.json, rootfs, the log fifo, its records of
// the shim's address) and what the shim and its backends add (pid files,
// runtime logs, the resolved configuration, the init's exit). Every path is
// spelled here and nowhere else, so "delete" (after the shim died) and the
// backends agree with the serving shim about where things are.
package bundle

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Bundle is the absolute path of a task's bundle directory.
type Bundle string

// Path returns the bundle directory.
func (b Bundle) Path() string { return string(b) }

func (b Bundle) join(name string) string { return filepath.Join(string(b), name) }

// Spec is the OCI runtime spec containerd wrote.
func (b Bundle) Spec() string { return b.join("config.json") }

// Rootfs is where the shim mounts the container's root filesystem.
func (b Bundle) Rootfs() string { return b.join("rootfs") }

// LogFifo is the fifo containerd reads the shim's log from.
func (b Bundle) LogFifo() string { return b.join("log") }

// BootstrapFile is where containerd 2.x records the shim's address.
func (b Bundle) BootstrapFile() string { return b.join("bootstrap.json") }

// AddressFile is where containerd 1.x reads the shim's address from after a
// restart; the shim writes it.
func (b Bundle) AddressFile() string { return b.join("address") }

// InitPidFile is where the runtime writes the init's host pid.
func (b Bundle) InitPidFile() string { return b.join("init.pid") }

// ExecPidFile is where the runtime writes an exec's host pid.
func (b Bundle) ExecPidFile(execID string) string { return b.join("exec-" + execID + ".pid") }

// ExecInternalPidFile is where gVisor writes an exec's pid inside its sandbox.
func (b Bundle) ExecInternalPidFile(execID string) string { return b.ExecPidFile(execID) + ".internal" }

// ExecInternalPidFiles lists the exec ids that have an internal pid file.
func (b Bundle) ExecInternalPidFiles() []string {
	matches, _ := filepath.Glob(b.join("exec-*.pid.internal"))
	ids := make([]string, 0, len(matches))
	for _, m := range matches {
		id := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(m), "exec-"), ".pid.internal")
		ids = append(ids, id)
	}
	return ids
}

// RuntimeLog is the JSON log a runtime CLI writes (runc: "log.json",
// runsc: "runsc.log").
func (b Bundle) RuntimeLog(name string) string { return b.join(name) }

// CriuWork is the default criu work directory.
func (b Bundle) CriuWork() string { return b.join("work") }

// CriuDumpLog keeps criu's log of a failed checkpoint.
func (b Bundle) CriuDumpLog() string { return b.join("criu-dump.log") }

// ShimConfig is the task's resolved shim configuration, for "delete".
func (b Bundle) ShimConfig() string { return b.join("custom-shim.json") }

// RuntimeOptions keeps the runtime options "start" received for a pod
// sandbox (the sandbox's bundle has no config.json), for the server.
func (b Bundle) RuntimeOptions() string { return b.join("custom-shim-options.pb") }

// SandboxFile is where containerd records, in a container's bundle, the
// pod sandbox whose shim runs it (CRI with sandboxer = "shim").
func (b Bundle) SandboxFile() string { return b.join("sandbox") }

// PodContainers lists, in a pod sandbox's bundle, the bundles of the pod's
// containers, for "delete" to clean the whole pod after its shim died
// (containerd 2.2 runs "delete" only for the sandbox).
func (b Bundle) PodContainers() string { return b.join("custom-shim-containers") }

// PodConfig keeps, in a pod sandbox's bundle, what "delete" needs to undo
// after the shim died (cgroup parent, backend).
func (b Bundle) PodConfig() string { return b.join("custom-shim-pod.json") }

// ExitFile records the init's exit, for "delete" after the shim is gone.
func (b Bundle) ExitFile() string { return b.join("custom-shim-exit.json") }

// Exit is a process exit as the bundle records it.
type Exit struct {
	Pid       int       `json:"Pid"`
	Status    int       `json:"Status"`
	Timestamp time.Time `json:"Timestamp"`
}

// WriteExit records the init's exit atomically.
func (b Bundle) WriteExit(e Exit) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return WriteFileAtomic(b.ExitFile(), data, 0o600)
}

// ReadExit reads what WriteExit recorded.
func (b Bundle) ReadExit() (Exit, error) {
	var e Exit
	data, err := os.ReadFile(b.ExitFile())
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(data, &e); err != nil {
		return e, fmt.Errorf("decode %s: %w", b.ExitFile(), err)
	}
	return e, nil
}

// ReadPidFile reads a pid file a runtime wrote.
func ReadPidFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("pid file %s: %w", path, err)
	}
	return pid, nil
}

// WriteFileAtomic writes through a temporary file and a rename, so a reader
// never sees half a file.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp) // best effort: the rename's error is the one to report
		return err
	}
	return nil
}

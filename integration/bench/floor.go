package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

// floor runs the same busybox `true` with the raw runtimes: runc run and
// runsc run of a prepared bundle, so the shims' own cost shows.
func (b *bench) floor() {
	dir, err := os.MkdirTemp("", "bench-bundle-")
	if err != nil {
		fatal(err)
	}
	runsc := filepath.Join(b.root, ".tools", "runsc", "runsc")
	defer func() {
		// runsc pins a null network namespace (a mount) in its root,
		// which RemoveAll cannot remove.
		if err := harness.CleanUnder(dir, runsc, nil); err != nil {
			fmt.Fprintf(os.Stderr, "bench: clean up %s: %v\n", dir, err)
		}
		_ = os.RemoveAll(dir) // a temp dir: best effort
	}()
	rootfs := filepath.Join(dir, "rootfs")
	if out, err := exec.Command("bash", "-c", fmt.Sprintf(
		"mkdir -p %[1]s && tar -xf %[2]s -C %[3]s && layer=$(ls -S %[3]s/blobs/sha256 | head -1) && tar -xzf %[3]s/blobs/sha256/$layer -C %[1]s",
		rootfs, busybox(b.root), dir)).CombinedOutput(); err != nil {
		fatal(fmt.Errorf("unpack busybox: %w: %s", err, out))
	}
	if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		fatal(fmt.Errorf("runc spec: %w: %s", err, out))
	}
	spec, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		fatal(err)
	}
	spec = bytes.Replace(spec, []byte(`"terminal": true`), []byte(`"terminal": false`), 1)
	spec = bytes.Replace(spec, []byte(`"sh"`), []byte(`"true"`), 1)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), spec, 0o644); err != nil {
		fatal(err)
	}
	cmds := map[string]func(id string) *exec.Cmd{
		"runc-shim": func(id string) *exec.Cmd {
			return exec.Command("runc", "--root", filepath.Join(dir, "state"), "run", "--bundle", dir, id)
		},
		"runc-shim-1.5": func(id string) *exec.Cmd {
			return exec.Command(runcLib(b.root), "--root", filepath.Join(dir, "state"), "run", "--bundle", dir, id)
		},
		"custom-runsc": func(id string) *exec.Cmd {
			return exec.Command(runsc, "--root", filepath.Join(dir, "runsc-state"), "run", "--bundle", dir, id)
		},
	}
	for _, name := range []string{"runc-shim", "runc-shim-1.5", "custom-runsc"} {
		var t []time.Duration
		for i := 0; i < *flagSeq; i++ {
			cmd := cmds[name](fmt.Sprintf("floor-%d", i))
			t0 := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				fatal(fmt.Errorf("%s: %w: %s", cmd.Args, err, out))
			}
			t = append(t, time.Since(t0))
		}
		label := "raw `runc run` of the bundle, p50 (ms)"
		if name == "custom-runsc" {
			label = "raw `runsc run` of the bundle, p50 (ms)"
		}
		b.record(label, name, ms(pct(t, 50)))
	}
}

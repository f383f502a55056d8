package shim

import (
	"fmt"
	"io"
	"os/exec"

	"github.com/containerd/cgroups/v3"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
)

// runCheck is "containerd-shim-custom-v2 check": which backends will work
// on this host, and why not.
func runCheck(w io.Writer) int {
	cfg, err := oci.LoadDefaultConfig()
	if err != nil {
		fmt.Fprintf(w, "config: %v\n", err)
		return 1
	}
	fmt.Fprintf(w, "config: %s (default backend %s)\n", cfg.Source, cfg.Backend)
	mode := map[cgroups.CGMode]string{
		cgroups.Legacy: "v1 (legacy)", cgroups.Hybrid: "v1 (hybrid, v2 mounted beside)",
		cgroups.Unified: "v2 (unified)", cgroups.Unavailable: "unavailable",
	}[cgroups.Mode()]
	fmt.Fprintf(w, "cgroups: %s\n", mode)
	rc := 0
	for _, b := range []struct{ name, bin string }{
		{oci.BackendRunc, cfg.Runc.BinaryName},
		{oci.BackendRunsc, cfg.Runsc.BinaryName},
	} {
		path, err := exec.LookPath(b.bin)
		if err != nil {
			fmt.Fprintf(w, "backend %s: unavailable: binary %q not found\n", b.name, b.bin)
			if b.name == cfg.Backend {
				rc = 1
			}
			continue
		}
		if _, ok := DefaultBackends[b.name]; !ok {
			fmt.Fprintf(w, "backend %s: unavailable: not built into this shim (binary %s)\n", b.name, path)
			continue
		}
		fmt.Fprintf(w, "backend %s: ok (%s)\n", b.name, path)
	}
	return rc
}

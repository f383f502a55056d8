package shim

import (
	"fmt"
	"io"
	"os/exec"

	"github.com/containerd/cgroups/v3"
)

// runCheck is "containerd-shim-custom-v2 check": which backends will work
// on this host, and why not.
func runCheck(w io.Writer) int {
	reg := backends()
	cfg, err := reg.Schema().LoadDefaultConfig()
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
	for _, name := range reg.Names() {
		bin := cfg.Sections[name].Binary()
		path, err := exec.LookPath(bin)
		if err != nil {
			fmt.Fprintf(w, "backend %s: unavailable: binary %q not found\n", name, bin)
			if name == cfg.Backend {
				rc = 1
			}
			continue
		}
		fmt.Fprintf(w, "backend %s: ok (%s)\n", name, path)
	}
	return rc
}

package shim

import (
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runc"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runsc"
)

// backends are the runtimes built into the shim, one line each; the first
// is the default.
func backends() *runtime.Registry {
	return runtime.NewRegistry(
		runc.Registration(),
		runsc.Registration(),
	)
}

// Command containerd-shim-custom-v2 is a containerd shim v2 runtime
// (runtime_type "io.containerd.custom.v2") with runc and gVisor backends.
package main

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// runc's nsexec runs as a C constructor before the Go runtime starts;
	// it does nothing unless libcontainer started this process as a
	// container's init.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim"
)

func init() {
	// libcontainer re-executes this binary as "<binary> init" for every
	// container process it starts (the runc backend's in-process mode):
	// the argument is libcontainer's contract, not a mode of ours.
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init() // never returns
	}
}

func main() {
	shim.Main()
}

// Command containerd-shim-custom-v2 is a containerd shim v2 runtime
// (runtime_type "io.containerd.custom.v2") with runc and gVisor backends.
package main

import "github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim"

func main() {
	shim.Main()
}

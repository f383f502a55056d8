// Small static programs baked into the offline test images (scripts/peer/mkimages.sh).
// A module of its own so the shim's `go vet ./...` and go.mod stay untouched.
module github.com/custom-runtime/containerd-shim-custom-v2/scripts/peer/go

go 1.22

package shim

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/containerdversion"
)

// daemonMajor asks containerd at its gRPC address for its version ("v1.7.36",
// "1.7.36-k3s1"); 0 when it does not answer within a second.
func daemonMajor(ctx context.Context, address string) int {
	if address == "" {
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	v, err := containerdversion.Ask(ctx, trimUnix(address))
	if err != nil {
		return 0
	}
	major, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	n, _ := strconv.Atoi(major)
	return n
}

package shim

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"slices"

	"github.com/containerd/containerd/api/types"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
)

// runInfo answers containerd's "-info" call (2.2+): the runtime options on
// stdin, a RuntimeInfo protobuf on stdout. The features are those of the
// backend the options select.
func runInfo(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	data, err := io.ReadAll(io.LimitReader(stdin, 10<<20))
	if err != nil {
		return fmt.Errorf("read runtime options: %w", err)
	}
	var opts *anypb.Any
	if len(data) > 0 {
		opts = &anypb.Any{}
		if err := proto.Unmarshal(data, opts); err != nil {
			return fmt.Errorf("decode runtime options: %w", err)
		}
	}
	cfg, err := oci.ConfigFromOptions(opts)
	if err != nil {
		return err
	}
	info := &types.RuntimeInfo{
		Name:    Name,
		Version: &types.RuntimeVersion{Version: Version, Revision: Revision},
		Options: opts,
		Annotations: map[string]string{
			"backend": cfg.Backend,
		},
	}
	bin := cfg.Runc.BinaryName
	if cfg.Backend == oci.BackendRunsc {
		bin = cfg.Runsc.BinaryName
	}
	if path, err := exec.LookPath(bin); err == nil {
		r := &gorunc.Runc{Command: path}
		if feat, err := r.Features(ctx); err == nil {
			if cfg.Backend == oci.BackendRunsc {
				withoutUserNamespaces(feat)
			}
			if info.Features, err = typeurl.MarshalAnyToProto(feat); err != nil {
				return fmt.Errorf("marshal features: %w", err)
			}
		}
	}
	out, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// withoutUserNamespaces drops what "runsc features" claims but runsc cannot
// do through containerd: join CRI's pinned user namespace or idmap mounts.
// Advertised, CRI would send user-namespaced pods that then fail in the
// gofer; withheld, CRI refuses them cleanly.
func withoutUserNamespaces(f *features.Features) {
	if f.Linux == nil {
		return
	}
	f.Linux.Namespaces = slices.DeleteFunc(f.Linux.Namespaces, func(ns string) bool { return ns == "user" })
	if m := f.Linux.MountExtensions; m != nil && m.IDMap != nil {
		off := false
		m.IDMap.Enabled = &off
	}
}

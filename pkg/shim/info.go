package shim

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
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
	reg := backends()
	cfg, err := reg.Schema().ConfigFromOptions(opts)
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
	// A runtime that cannot say is not an error: containerd only logs it.
	if feat, err := reg.Features(ctx, cfg); err == nil && feat != nil {
		if info.Features, err = typeurl.MarshalAnyToProto(feat); err != nil {
			return fmt.Errorf("marshal features: %w", err)
		}
	}
	out, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

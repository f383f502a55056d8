package shim

import (
	"context"
	"reflect"
	"time"

	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim/recovery"
)

// Register serves the Task API on server, as containerd.task.v3.Task and,
// for containerd 1.7 (which dials only v2), as containerd.task.v2.Task. The
// two protos differ only in their package name, so the v2 service decodes
// into the v3 messages.
func Register(server *ttrpc.Server, svc taskv3.TTRPCTaskService) {
	taskv3.RegisterTTRPCTaskService(server, svc)
	server.RegisterService("containerd.task.v2.Task", reflectDesc(svc))
}

// reflectDesc builds a ttrpc service description from the methods of the
// v3 interface: each takes (context, *Request) and returns (*Response, error).
func reflectDesc(svc taskv3.TTRPCTaskService) *ttrpc.ServiceDesc {
	desc := &ttrpc.ServiceDesc{Methods: make(map[string]ttrpc.Method)}
	it := reflect.TypeOf((*taskv3.TTRPCTaskService)(nil)).Elem()
	v := reflect.ValueOf(svc)
	for i := 0; i < it.NumMethod(); i++ {
		m := it.Method(i)
		fn := v.MethodByName(m.Name)
		reqType := m.Type.In(1).Elem()
		desc.Methods[m.Name] = func(ctx context.Context, unmarshal func(any) error) (any, error) {
			req := reflect.New(reqType)
			if err := unmarshal(req.Interface()); err != nil {
				return nil, err
			}
			out := fn.Call([]reflect.Value{reflect.ValueOf(ctx), req})
			if err, _ := out[1].Interface().(error); err != nil {
				return nil, err
			}
			return out[0].Interface(), nil
		}
	}
	return desc
}

// serverOptions are the shim's ttrpc server's options: only the shim's
// user may connect; a handler's panic fails its request, not the shim, and
// marks its task in marks (task.Service).
func serverOptions(rec *metrics.Recorder, trim *memoryTrimmer, marks recovery.Marker) []ttrpc.ServerOpt {
	return []ttrpc.ServerOpt{
		ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()),
		ttrpc.WithChainUnaryServerInterceptor(interceptor(rec, trim), recovery.Interceptor(rec, marks)),
	}
}

// interceptor converts errors to gRPC status once, at the ttrpc boundary,
// so their errdefs kind reaches containerd (a plain error would arrive as
// Unknown), and records each RPC's result and duration.
func interceptor(rec *metrics.Recorder, trim *memoryTrimmer) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (any, error) {
		start := time.Now()
		resp, err := method(ctx, unmarshal)
		rec.RPC(info.FullMethod, metrics.Result(err), time.Since(start))
		trim.activity()
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		return resp, nil
	}
}

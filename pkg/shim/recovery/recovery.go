// Package recovery keeps a panic in one request handler (libcontainer,
// runsc's output parsing, a nil from containerd) from killing the shim and
// with it every container of the pod.
package recovery

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// Marker is told which task (or sandbox) a recovered panic was serving;
// task.Service refuses that task's later requests, but those that clean it
// up, since its state may be half-changed.
type Marker interface {
	Panicked(id, method string, v any)
}

// Markers tells each of its Markers (the task service and the sandbox
// service: the id names a task or a sandbox, each ignores the other's).
type Markers []Marker

// Panicked implements Marker.
func (ms Markers) Panicked(id, method string, v any) {
	for _, m := range ms {
		m.Panicked(id, method, v)
	}
}

// Interceptor recovers a panic of the handler it wraps: the stack is logged
// at error, the panic counted (panics_total{method}), the request's task
// marked, and the request fails with Internal (an errdefs error: the
// server's outer interceptor converts it to a status). It must be the
// innermost interceptor, so that the others see a failed request.
func Interceptor(rec *metrics.Recorder, marks Marker) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (resp any, err error) {
		var req any // the decoded request: it names the task
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			name := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
			id := requestID(req)
			log.G(ctx).WithFields(log.Fields{"method": info.FullMethod, "id": id, "panic": v, "stack": string(debug.Stack())}).
				Error("request handler panicked; the request fails with Internal")
			rec.Panic(name)
			if id != "" && marks != nil {
				marks.Panicked(id, name, v)
			}
			resp, err = nil, fmt.Errorf("%s of %q panicked: %v: %w", name, id, v, errdefs.ErrInternal)
		}()
		return method(ctx, func(r any) error {
			req = r
			return unmarshal(r)
		})
	}
}

// requestID is the task or sandbox a request is for: the requests of Task
// API v2 and v3 carry an ID (the task's; Shutdown's is the shim's first
// task), those of the Sandbox API a SandboxID.
func requestID(req any) string {
	switch r := req.(type) {
	case interface{ GetSandboxID() string }:
		return r.GetSandboxID()
	case interface{ GetID() string }:
		return r.GetID()
	}
	return ""
}

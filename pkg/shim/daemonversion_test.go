package shim

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

type versionServer struct {
	versionapi.UnimplementedVersionServer
	version string
}

func (s versionServer) Version(context.Context, *emptypb.Empty) (*versionapi.VersionResponse, error) {
	if s.version == "" {
		return nil, status.Error(codes.Unavailable, "not serving")
	}
	return &versionapi.VersionResponse{Version: s.version, Revision: "abc"}, nil
}

// serveVersion runs grpc-go's server, as containerd does, on a unix socket.
func serveVersion(t *testing.T, version string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	versionapi.RegisterVersionServer(srv, versionServer{version: version})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return sock
}

// The shim asks containerd's version with net/http's h2c (it links no
// gRPC); containerd's server is grpc-go.
func TestDaemonMajorAgainstGRPCServer(t *testing.T) {
	for version, want := range map[string]int{"v1.7.36": 1, "1.7.36-k3s1": 1, "v2.2.9": 2, "2.4.2+unknown": 2} {
		sock := serveVersion(t, version)
		if got := daemonMajor(context.Background(), "unix://"+sock); got != want {
			t.Errorf("containerd %s: major %d, want %d", version, got, want)
		}
	}
	// An error status (trailers-only reply), no server, no address: 0.
	if got := daemonMajor(context.Background(), serveVersion(t, "")); got != 0 {
		t.Errorf("error status: major %d, want 0", got)
	}
	if got := daemonMajor(context.Background(), filepath.Join(t.TempDir(), "none.sock")); got != 0 {
		t.Errorf("no server: major %d, want 0", got)
	}
	if got := daemonMajor(context.Background(), ""); got != 0 {
		t.Errorf("no address: major %d, want 0", got)
	}
}

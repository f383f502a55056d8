// Package versiontest serves containerd's Version API for tests, with
// grpc-go's server as containerd does.
package versiontest

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

type server struct {
	versionapi.UnimplementedVersionServer
	version string
}

func (s server) Version(context.Context, *emptypb.Empty) (*versionapi.VersionResponse, error) {
	if s.version == "" {
		return nil, status.Error(codes.Unavailable, "not serving")
	}
	return &versionapi.VersionResponse{Version: s.version, Revision: "abc"}, nil
}

// Serve answers version ("" answers Unavailable) on a unix socket in a
// temporary directory, until the test ends, and returns the socket's path.
func Serve(t testing.TB, version string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	versionapi.RegisterVersionServer(srv, server{version: version})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return sock
}

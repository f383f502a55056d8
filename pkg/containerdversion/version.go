// Package containerdversion asks a containerd which version it is, without
// a gRPC client (Ask).
package containerdversion

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/protobuf/proto"
)

// Ask is one unary gRPC call, Version.Version, made with net/http's HTTP/2
// without TLS (h2c) over containerd's unix socket at socket. The shim links
// no gRPC (built with containerd's no_grpc tag): grpc-go's client would add
// its transport, balancers, resolvers and their package-init heap to every
// shim and every `runc init`, for a call made only by some `start`s.
func Ask(ctx context.Context, socket string) (string, error) {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{
		Protocols: protocols,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	defer client.CloseIdleConnections()
	// The request: a length-prefixed message (flag 0: not compressed) of
	// google.protobuf.Empty, which encodes as nothing.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		"http://containerd/containerd.services.version.v1.Version/Version", bytes.NewReader(make([]byte, 5)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	// The status comes in the trailers, or in the headers of a reply
	// without a body (trailers-only).
	status := resp.Trailer.Get("Grpc-Status")
	if status == "" {
		status = resp.Header.Get("Grpc-Status")
	}
	if resp.StatusCode != http.StatusOK || status != "0" {
		return "", fmt.Errorf("containerd version: HTTP %d, grpc-status %q: %s", resp.StatusCode, status, resp.Trailer.Get("Grpc-Message"))
	}
	if len(body) < 5 || body[0] != 0 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
		return "", fmt.Errorf("containerd version: malformed reply of %d bytes", len(body))
	}
	var v versionapi.VersionResponse
	if err := proto.Unmarshal(body[5:], &v); err != nil {
		return "", fmt.Errorf("containerd version: %w", err)
	}
	return v.GetVersion(), nil
}

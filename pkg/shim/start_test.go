package shim

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func anyOf(t *testing.T, v any) *anypb.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// What "start" reads from each containerd line, and how it answers.
func TestReadBootstrapPerContainerdLine(t *testing.T) {
	f := &flags{namespace: "k8s.io", id: "c1", address: "/run/containerd/containerd.sock", debug: false}
	t.Setenv("TTRPC_ADDRESS", "/run/containerd/containerd.sock.ttrpc")
	opts := anyOf(t, &runtimeoptions.Options{ConfigPath: "/etc/containerd/custom-runsc.toml"})
	never := func() bool { t.Fatal("a BootstrapParams must not make start ask which containerd it is"); return false }

	cases := []struct {
		name     string
		stdin    []byte
		legacy   func() bool
		kind     replyKind
		options  string // type URL, "" for none
		ttrpc    string
		debug    bool
		wantErr  string
		sockDir  string
		grpcAddr string
	}{
		{
			name: "2.3+ BootstrapParams with options and addresses",
			stdin: marshal(t, &bootapi.BootstrapParams{
				InstanceID: "c1", Namespace: "k8s.io", LogLevel: bootapi.LogLevel_LOG_LEVEL_DEBUG,
				ContainerdTtrpcAddress: "/x/ttrpc", ContainerdGrpcAddress: "/x/grpc", SocketDir: proto.String("/x/s"),
				Extensions: []*bootapi.Extension{{Value: opts}},
			}),
			legacy: never, kind: replyProto, options: opts.GetTypeUrl(), ttrpc: "/x/ttrpc", debug: true, sockDir: "/x/s", grpcAddr: "/x/grpc",
		},
		{
			name:   "2.3+ BootstrapParams with runc options",
			stdin:  marshal(t, &bootapi.BootstrapParams{InstanceID: "c1", Namespace: "k8s.io", LogLevel: bootapi.LogLevel_LOG_LEVEL_INFO, Extensions: []*bootapi.Extension{{Value: anyOf(t, &runcoptions.Options{BinaryName: "runsc"})}}}),
			legacy: never, kind: replyProto, options: "containerd.runc.v1.Options", ttrpc: "/run/containerd/containerd.sock.ttrpc", grpcAddr: "/run/containerd/containerd.sock",
		},
		{
			name:   "2.0-2.2: the options Any on stdin, JSON reply",
			stdin:  marshal(t, opts),
			legacy: func() bool { return false }, kind: replyJSON, options: opts.GetTypeUrl(), ttrpc: "/run/containerd/containerd.sock.ttrpc", grpcAddr: "/run/containerd/containerd.sock",
		},
		{
			name:   "2.0-2.2: no options",
			legacy: func() bool { return false }, kind: replyJSON, ttrpc: "/run/containerd/containerd.sock.ttrpc", grpcAddr: "/run/containerd/containerd.sock",
		},
		{
			name:   "1.7: the options Any on stdin, plain address",
			stdin:  marshal(t, opts),
			legacy: func() bool { return true }, kind: replyAddress, options: opts.GetTypeUrl(), ttrpc: "/run/containerd/containerd.sock.ttrpc", grpcAddr: "/run/containerd/containerd.sock",
		},
		{
			name:   "params for another task are options, not a bootstrap",
			stdin:  marshal(t, &bootapi.BootstrapParams{InstanceID: "other", Namespace: "k8s.io"}),
			legacy: func() bool { return false }, kind: replyJSON, ttrpc: "/run/containerd/containerd.sock.ttrpc", grpcAddr: "/run/containerd/containerd.sock",
			options: "other", // read as an Any: its type is refused later, at create
		},
		{
			name:   "garbage",
			stdin:  []byte{0xff, 0xff, 0xff},
			legacy: func() bool { return false }, wantErr: "decode runtime options",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := readBootstrap(f, bytes.NewReader(tc.stdin), tc.legacy)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("want error %q, got %v", tc.wantErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.kind != tc.kind || b.ttrpcAddress != tc.ttrpc || b.debug != tc.debug || b.socketDir != tc.sockDir || b.grpcAddress != tc.grpcAddr {
				t.Fatalf("got %+v", b)
			}
			// No options wanted: empty options pass for none.
			emptyOptions := tc.options == "" && b.options != nil && len(b.options.GetValue()) == 0
			if got := b.options.GetTypeUrl(); got != tc.options && !emptyOptions {
				t.Fatalf("options %q, want %q", got, tc.options)
			}
		})
	}
}

func TestReplyPerKind(t *testing.T) {
	const addr = "unix:///run/containerd/s/abc"
	var buf bytes.Buffer
	if err := reply(&buf, replyProto, addr); err != nil {
		t.Fatal(err)
	}
	var res bootapi.BootstrapResult
	if err := proto.Unmarshal(buf.Bytes(), &res); err != nil || res.GetVersion() != 3 || res.GetAddress() != addr || res.GetProtocol() != "ttrpc" {
		t.Fatalf("protobuf reply: %v %+v", err, &res)
	}
	buf.Reset()
	if err := reply(&buf, replyJSON, addr); err != nil {
		t.Fatal(err)
	}
	var js struct {
		Version  int    `json:"version"`
		Address  string `json:"address"`
		Protocol string `json:"protocol"`
	}
	if err := json.Unmarshal(buf.Bytes(), &js); err != nil || js.Version != 3 || js.Address != addr || js.Protocol != "ttrpc" {
		t.Fatalf("JSON reply: %v %s", err, buf.String())
	}
	buf.Reset()
	if err := reply(&buf, replyAddress, addr); err != nil || buf.String() != addr {
		t.Fatalf("plain reply: %v %q", err, buf.String())
	}
}

func TestModuleMajor(t *testing.T) {
	for p, want := range map[string]int{
		"github.com/containerd/containerd/v2/cmd/containerd": 2,
		"github.com/containerd/containerd/v2":                2,
		"github.com/containerd/containerd/cmd/containerd":    1,
		"github.com/containerd/containerd":                   1,
		"github.com/k3s-io/k3s":                              0,
		"":                                                   0,
	} {
		if got := moduleMajor(p); got != want {
			t.Errorf("%q: %d, want %d", p, got, want)
		}
	}
}

// The server gets containerd's environment, its ttrpc address and the Go
// settings; a GODEBUG containerd had is kept, ours after it (the later
// setting of a key wins).
func TestServerEnv(t *testing.T) {
	got := serverEnv([]string{"PATH=/bin", "GODEBUG=http2debug=1,memprofilerate=512", "GOMAXPROCS=8"}, "/run/c.sock.ttrpc")
	want := []string{"PATH=/bin", "GOMAXPROCS=8", "TTRPC_ADDRESS=/run/c.sock.ttrpc", "GOMAXPROCS=" + serverMaxProcs, "GODEBUG=http2debug=1,memprofilerate=512,memprofilerate=0"}
	if !slices.Equal(got, want) {
		t.Errorf("serverEnv:\n got %q\nwant %q", got, want)
	}
	got = serverEnv([]string{"GODEBUG="}, "a")
	if got[len(got)-1] != "GODEBUG=memprofilerate=0" {
		t.Errorf("empty GODEBUG: %q", got)
	}
	// exec.Cmd keeps the last of duplicate keys: ours.
	cmd := exec.Command("/bin/sh", "-c", `echo "$GOMAXPROCS $GODEBUG"`)
	cmd.Env = serverEnv([]string{"GOMAXPROCS=8"}, "a")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(out)); s != serverMaxProcs+" memprofilerate=0" {
		t.Errorf("the server would see %q", s)
	}
}

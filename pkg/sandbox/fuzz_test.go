package sandbox

import (
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/anypb"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// FuzzDecodePodConfig: whatever CreateSandboxRequest.options carries, the
// decoder never panics, and a refusal is InvalidArgument or NotImplemented.
func FuzzDecodePodConfig(f *testing.F) {
	for _, pc := range []*criapi.PodSandboxConfig{
		{Metadata: &criapi.PodSandboxMetadata{Name: "p"}, Hostname: "h", DnsConfig: &criapi.DNSConfig{Servers: []string{"1.1.1.1"}}},
		{Linux: &criapi.LinuxPodSandboxConfig{CgroupParent: "/k", Sysctls: map[string]string{"net.core.somaxconn": "1"},
			SecurityContext: &criapi.LinuxSandboxSecurityContext{NamespaceOptions: &criapi.NamespaceOption{Network: criapi.NamespaceMode_NODE}}}},
	} {
		a, err := anypbOf(pc)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(a.GetValue(), "/var/run/netns/x")
	}
	f.Add([]byte{0x0a, 0x02, 0x0a}, "")
	f.Fuzz(func(t *testing.T, data []byte, netns string) {
		_, err := decodePodConfig(&anypb.Any{TypeUrl: "runtime.v1.PodSandboxConfig", Value: data}, netns)
		if err != nil && !errdefs.IsInvalidArgument(err) && !errdefs.IsNotImplemented(err) {
			t.Fatalf("error of the wrong kind: %v", err)
		}
	})
}

func anypbOf(pc *criapi.PodSandboxConfig) (*anypb.Any, error) { return anypb.New(pc) }

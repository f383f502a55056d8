package shim

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// The shim runs once per Pod: what it links is resident in each (text) and
// initialised in each, and in every `runc init` libcontainer starts from
// this binary. The node aggregator's stack and grpc-go stay out
// (docs/benchmarks.md says what each cost).
func TestShimLinksNoAggregator(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool")
	}
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^BUILDTAGS \?= (.*)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("Makefile: no BUILDTAGS line")
	}
	out, err := exec.Command("go", "list", "-deps", "-tags", string(m[1]), "../../cmd/containerd-shim-custom-v2").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v: %s", err, out)
	}
	forbidden := []string{
		"github.com/custom-runtime/containerd-shim-custom-v2/pkg/aggregator",
		"github.com/prometheus/exporter-toolkit/",
		"github.com/fsnotify/",
		"go.yaml.in/yaml/",
		"gopkg.in/yaml",
		"github.com/golang-jwt/",
		"golang.org/x/oauth2",
		"golang.org/x/net/trace",
		"google.golang.org/grpc/internal/transport",
	}
	for _, p := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(p, f) || p == "google.golang.org/grpc" {
				t.Errorf("the shim links %s", p)
				break
			}
		}
	}
}

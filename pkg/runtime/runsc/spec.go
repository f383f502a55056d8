package runsc

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	securejoin "github.com/cyphar/filepath-securejoin"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// checkExecutable looks the process's executable up in the rootfs, as runc
// does at create: "exec: X: executable file not found in $PATH". It gives
// up (no error) where it cannot tell: paths under a mount, which the
// container sees but the rootfs does not have.
func checkExecutable(b bundle.Bundle, s *specs.Spec) error {
	if s.Process == nil || len(s.Process.Args) == 0 || s.Root == nil {
		return nil
	}
	rootfs := s.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(b.Path(), rootfs)
	}
	arg0 := s.Process.Args[0]
	var candidates []string
	if strings.Contains(arg0, "/") {
		p := arg0
		if !filepath.IsAbs(p) {
			p = filepath.Join(s.Process.Cwd, p)
		}
		candidates = []string{p}
	} else {
		path := defaultPath
		for _, e := range s.Process.Env {
			if v, ok := strings.CutPrefix(e, "PATH="); ok {
				path = v
			}
		}
		for _, dir := range filepath.SplitList(path) {
			if dir != "" {
				candidates = append(candidates, filepath.Join(dir, arg0))
			}
		}
	}
	for _, c := range candidates {
		if underMount(s, c) {
			return nil
		}
		p, err := securejoin.SecureJoin(rootfs, c)
		if err != nil {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return nil
		}
	}
	return fmt.Errorf("%s: field \"process.args\": exec: %q: executable file not found in $PATH: %w",
		b.Spec(), arg0, errdefs.ErrInvalidArgument)
}

func underMount(s *specs.Spec, p string) bool {
	for _, m := range s.Mounts {
		d := filepath.Clean(m.Destination)
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// shareHostname gives a sandbox that shares the host's UTS namespace the
// host's name: gVisor takes its hostname from the spec alone, and CRI
// leaves it empty for hostNetwork pods. config.json is patched as raw JSON
// so that fields this shim does not know survive.
func shareHostname(b bundle.Bundle, s *specs.Spec) error {
	if s.Hostname != "" || s.Linux == nil {
		return nil
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.UTSNamespace {
			return nil
		}
	}
	name, err := os.Hostname()
	if err != nil {
		// The sandbox then keeps gVisor's default hostname: a name the pod
		// shows is no reason to fail its create.
		log.L.WithError(err).Debug("runsc: hostname not shared with the sandbox")
		return nil
	}
	path := b.Spec()
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	raw["hostname"], _ = json.Marshal(name)
	out, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	if err := bundle.WriteFileAtomic(path, out, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	s.Hostname = name
	return nil
}

package oci

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

// Option type URLs as containerd sends them.
var (
	runcOptionsURL    = mustTypeURL(&runcoptions.Options{})
	runtimeOptionsURL = mustTypeURL(&runtimeoptions.Options{})
)

func mustTypeURL(v any) string {
	u, err := typeurl.TypeURL(v)
	if err != nil {
		panic(err)
	}
	return u
}

// ConfigFromOptions resolves the configuration for a task from the runtime
// options containerd sent:
//   - containerd.runc.v1.Options (runtime_type io.containerd.runc.v2 style, or
//     task options such as WithShimCgroup): the runc backend, unless BinaryName
//     names runsc;
//   - runtimeoptions.v1.Options: TOML from ConfigPath, else ConfigBody;
//   - nothing: LoadDefaultConfig.
func (s *Schema) ConfigFromOptions(opts *anypb.Any) (*Config, error) {
	if opts == nil || (opts.GetTypeUrl() == "" && len(opts.GetValue()) == 0) {
		return s.LoadDefaultConfig()
	}
	switch {
	case opts.MessageIs(&runcoptions.Options{}):
		var ro runcoptions.Options
		if err := opts.UnmarshalTo(&ro); err != nil {
			return nil, fmt.Errorf("decode runtime options %s: %w: %w", opts.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
		}
		return s.configFromRuncOptions(&ro)
	case opts.MessageIs(&runtimeoptions.Options{}):
		var ro runtimeoptions.Options
		if err := opts.UnmarshalTo(&ro); err != nil {
			return nil, fmt.Errorf("decode runtime options %s: %w: %w", opts.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
		}
		switch {
		case ro.ConfigPath != "":
			if !filepath.IsAbs(ro.ConfigPath) || strings.ContainsRune(ro.ConfigPath, 0) {
				return nil, fmt.Errorf("runtime options: field \"ConfigPath\": %q is not an absolute path: %w", ro.ConfigPath, errdefs.ErrInvalidArgument)
			}
			return s.LoadConfigFile(ro.ConfigPath)
		case len(ro.ConfigBody) > 0:
			return s.ParseConfig(ro.ConfigBody, "runtime options ConfigBody")
		default:
			return s.LoadDefaultConfig()
		}
	default:
		return nil, fmt.Errorf("unsupported runtime options type %q (want %q or %q): %w",
			opts.GetTypeUrl(), runcOptionsURL, runtimeOptionsURL, errdefs.ErrInvalidArgument)
	}
}

// configFromRuncOptions maps containerd's runc options onto our schema. The
// defaults file still applies underneath, so an operator's settings (say a
// runc root) hold for clients that always send runc options. A BinaryName
// that a backend claims (runsc) selects that backend, else the default one.
func (s *Schema) configFromRuncOptions(ro *runcoptions.Options) (*Config, error) {
	c, err := s.LoadDefaultConfig()
	if err != nil {
		return nil, err
	}
	c.Source = "runc options (containerd.runc.v1.Options)"
	// A BinaryName picks the backend that claims it (runsc), else the
	// default one. Without one (options that only carry a shim cgroup, an
	// I/O owner, or containerd 2.2's task API address for a pod sandbox's
	// containers) the defaults file's backend stands.
	if ro.BinaryName != "" {
		c.Backend = s.backendFor(ro.BinaryName)
	}
	c.Section().ApplyRuncOptions(ro)
	c.IoUID = int(ro.IoUid)
	c.IoGID = int(ro.IoGid)
	c.ShimCgroup = ro.ShimCgroup
	if err := c.validate(s); err != nil {
		return nil, err
	}
	return c, nil
}

// backendFor is the backend that claims a runtime binary (runsc), else the
// default one.
func (s *Schema) backendFor(binary string) string {
	for _, n := range s.names {
		if s.newFn[n]().ClaimsBinary(filepath.Base(binary)) {
			return n
		}
	}
	return s.defaultBackend()
}

// stored is a Config as a bundle keeps it: the selected backend's table
// only.
type stored struct {
	Backend                string          `json:"backend"`
	AllowBackendAnnotation bool            `json:"allow_backend_annotation,omitempty"`
	RuntimeHandler         string          `json:"runtime_handler,omitempty"`
	PodsPerShim            int             `json:"pods_per_shim,omitempty"`
	IoUID                  int             `json:"io_uid,omitempty"`
	IoGID                  int             `json:"io_gid,omitempty"`
	ShimCgroup             string          `json:"shim_cgroup,omitempty"`
	Settings               json.RawMessage `json:"settings,omitempty"`
	Source                 string          `json:"source,omitempty"`
}

// WriteConfigFile stores the resolved configuration in the bundle, for
// "delete" to find the backend after the shim is gone.
func WriteConfigFile(b bundle.Bundle, c *Config) error {
	settings, err := json.Marshal(c.Section())
	if err != nil {
		return fmt.Errorf("encode shim config: %w", err)
	}
	data, err := json.Marshal(stored{
		Backend: c.Backend, AllowBackendAnnotation: c.AllowBackendAnnotation, RuntimeHandler: c.RuntimeHandler, PodsPerShim: c.PodsPerShim,
		IoUID: c.IoUID, IoGID: c.IoGID, ShimCgroup: c.ShimCgroup, Settings: settings, Source: c.Source,
	})
	if err != nil {
		return fmt.Errorf("encode shim config: %w", err)
	}
	if err := os.WriteFile(b.ShimConfig(), data, 0o600); err != nil {
		return fmt.Errorf("write shim config into bundle: %w", err)
	}
	return nil
}

// ReadConfigFile loads what WriteConfigFile stored. NotFound: the bundle
// has none (a create that never got as far as the backend).
func (s *Schema) ReadConfigFile(b bundle.Bundle) (*Config, error) {
	p := b.ShimConfig()
	data, err := os.ReadFile(p)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: %w", p, errdefs.ErrNotFound)
		}
		return nil, err
	}
	var st stored
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("decode %s: %w", p, err)
	}
	c := s.DefaultConfig()
	if !s.Has(st.Backend) {
		return nil, fmt.Errorf("%s: %w", p, s.unknownBackend("field \"backend\"", st.Backend))
	}
	c.Backend, c.AllowBackendAnnotation, c.RuntimeHandler, c.PodsPerShim = st.Backend, st.AllowBackendAnnotation, st.RuntimeHandler, st.PodsPerShim
	c.IoUID, c.IoGID, c.ShimCgroup, c.Source = st.IoUID, st.IoGID, st.ShimCgroup, st.Source
	if len(st.Settings) > 0 {
		if err := json.Unmarshal(st.Settings, c.Section()); err != nil {
			return nil, fmt.Errorf("decode %s: settings: %w", p, err)
		}
	}
	return c, nil
}

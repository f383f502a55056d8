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
func ConfigFromOptions(opts *anypb.Any) (*Config, error) {
	if opts == nil || (opts.GetTypeUrl() == "" && len(opts.GetValue()) == 0) {
		return LoadDefaultConfig()
	}
	switch {
	case opts.MessageIs(&runcoptions.Options{}):
		var ro runcoptions.Options
		if err := opts.UnmarshalTo(&ro); err != nil {
			return nil, fmt.Errorf("decode runtime options %s: %w: %w", opts.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
		}
		return configFromRuncOptions(&ro)
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
			return LoadConfigFile(ro.ConfigPath)
		case len(ro.ConfigBody) > 0:
			return ParseConfig(ro.ConfigBody, "runtime options ConfigBody")
		default:
			return LoadDefaultConfig()
		}
	default:
		return nil, fmt.Errorf("unsupported runtime options type %q (want %q or %q): %w",
			opts.GetTypeUrl(), runcOptionsURL, runtimeOptionsURL, errdefs.ErrInvalidArgument)
	}
}

// configFromRuncOptions maps containerd's runc options onto our schema. The
// defaults file still applies underneath, so an operator's settings (say a
// runc root) hold for clients that always send runc options.
func configFromRuncOptions(ro *runcoptions.Options) (*Config, error) {
	c, err := LoadDefaultConfig()
	if err != nil {
		return nil, err
	}
	c.Source = "runc options (containerd.runc.v1.Options)"
	if ro.BinaryName != "" && strings.Contains(filepath.Base(ro.BinaryName), "runsc") {
		c.Backend = BackendRunsc
		c.Runsc.BinaryName = ro.BinaryName
		if ro.Root != "" {
			c.Runsc.Root = ro.Root
		}
	} else {
		c.Backend = BackendRunc
		if ro.BinaryName != "" {
			c.Runc.BinaryName = ro.BinaryName
		}
		if ro.Root != "" {
			c.Runc.Root = ro.Root
		}
	}
	c.Runc.SystemdCgroup = ro.SystemdCgroup
	c.Runc.NoPivotRoot = ro.NoPivotRoot
	c.Runc.NoNewKeyring = ro.NoNewKeyring
	if ro.CriuWorkPath != "" {
		c.Runc.CriuWorkPath = ro.CriuWorkPath
	}
	c.Runc.IoUID = int(ro.IoUid)
	c.Runc.IoGID = int(ro.IoGid)
	c.Runc.ShimCgroup = ro.ShimCgroup
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// WriteConfigFile stores the resolved configuration in the bundle.
func WriteConfigFile(bundle string, c *Config) error {
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode shim config: %w", err)
	}
	if err := os.WriteFile(ConfigFilePath(bundle), data, 0o600); err != nil {
		return fmt.Errorf("write shim config into bundle: %w", err)
	}
	return nil
}

// ReadConfigFile loads what WriteConfigFile stored.
func ReadConfigFile(bundle string) (*Config, error) {
	p := ConfigFilePath(bundle)
	data, err := os.ReadFile(p)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("%s: %w", p, errdefs.ErrNotFound)
		}
		return nil, err
	}
	c := &Config{}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, fmt.Errorf("decode %s: %w", p, err)
	}
	c.setDefaults()
	return c, nil
}

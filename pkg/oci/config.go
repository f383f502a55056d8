// Package oci reads what containerd hands the shim: the bundle's config.json,
// its annotations, and the runtime options that pick and configure a backend.
package oci

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"
)

// Backend names.
const (
	BackendRunc  = "runc"
	BackendRunsc = "runsc"
)

// Defaults for options that are not set anywhere.
const (
	DefaultRuncRoot  = "/run/containerd/custom/runc"
	DefaultRunscRoot = "/run/containerd/custom/runsc"
	// DefaultConfigPath is read when containerd sends no runtime options
	// (ctr without --runtime-config-path, nerdctl, containerd's client suite).
	DefaultConfigPath = "/etc/containerd/custom-shim.toml"
	// ConfigEnv names a config file that replaces DefaultConfigPath; the shim
	// inherits it from containerd's environment.
	ConfigEnv = "CONTAINERD_SHIM_CUSTOM_CONFIG"
)

// Config is the shim's TOML configuration, one per runtime handler.
//
//	backend = "runc"                  # "runc" or "runsc"
//	allow_backend_annotation = false  # honour io.containerd.custom.v2.backend
//	runtime_handler = ""              # metrics label; default: this file's name
//	[runc]
//	binary_name = "runc"              # any runc-compatible CLI, e.g. crun
//	root = "/run/containerd/custom/runc"
//	systemd_cgroup = false
//	no_pivot_root = false
//	no_new_keyring = false
//	criu_work_path = ""               # default: <bundle>/work
//	[runsc]
//	binary_name = "runsc"
//	root = "/run/containerd/custom/runsc"
//	platform = "systrap"
//	network = "sandbox"
//	debug_log = ""
//	flags = { "overlay2" = "root:memory" }
type Config struct {
	Backend                string `toml:"backend" json:"backend"`
	AllowBackendAnnotation bool   `toml:"allow_backend_annotation" json:"allow_backend_annotation,omitempty"`
	// RuntimeHandler names the handler in metrics (runtime_handler label);
	// containerd does not tell shims. Default: the config file's base name.
	RuntimeHandler string      `toml:"runtime_handler" json:"runtime_handler,omitempty"`
	Runc           RuncConfig  `toml:"runc" json:"runc"`
	Runsc          RunscConfig `toml:"runsc" json:"runsc"`

	// TypeUrl may appear when CRI passes a whole options table as ConfigBody.
	TypeURL string `toml:"TypeUrl" json:"-"`

	// Source says where the configuration came from, for errors and logs.
	Source string `toml:"-" json:"source,omitempty"`
}

// RuncConfig configures the runc backend (and crun through the same CLI).
type RuncConfig struct {
	BinaryName    string `toml:"binary_name" json:"binary_name,omitempty"`
	Root          string `toml:"root" json:"root,omitempty"`
	SystemdCgroup bool   `toml:"systemd_cgroup" json:"systemd_cgroup,omitempty"`
	NoPivotRoot   bool   `toml:"no_pivot_root" json:"no_pivot_root,omitempty"`
	NoNewKeyring  bool   `toml:"no_new_keyring" json:"no_new_keyring,omitempty"`
	CriuWorkPath  string `toml:"criu_work_path" json:"criu_work_path,omitempty"`

	// Set only through containerd's runc options, which carry them per task.
	IoUID      int    `toml:"-" json:"io_uid,omitempty"`
	IoGID      int    `toml:"-" json:"io_gid,omitempty"`
	ShimCgroup string `toml:"-" json:"shim_cgroup,omitempty"`
}

// RunscConfig configures the gVisor backend.
type RunscConfig struct {
	BinaryName string            `toml:"binary_name" json:"binary_name,omitempty"`
	Root       string            `toml:"root" json:"root,omitempty"`
	Platform   string            `toml:"platform" json:"platform,omitempty"`
	Network    string            `toml:"network" json:"network,omitempty"`
	DebugLog   string            `toml:"debug_log" json:"debug_log,omitempty"`
	Flags      map[string]string `toml:"flags" json:"flags,omitempty"`
}

// DefaultConfig returns the built-in configuration.
func DefaultConfig() *Config {
	c := &Config{Source: "built-in defaults"}
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.Backend == "" {
		c.Backend = BackendRunc
	}
	if c.Runc.BinaryName == "" {
		c.Runc.BinaryName = "runc"
	}
	if c.Runc.Root == "" {
		c.Runc.Root = DefaultRuncRoot
	}
	if c.Runsc.BinaryName == "" {
		c.Runsc.BinaryName = "runsc"
	}
	if c.Runsc.Root == "" {
		c.Runsc.Root = DefaultRunscRoot
	}
	if c.Runsc.Platform == "" {
		c.Runsc.Platform = "systrap"
	}
	if c.Runsc.Network == "" {
		c.Runsc.Network = "sandbox"
	}
}

// Validate checks values that TOML decoding cannot; source names the input.
func (c *Config) Validate() error {
	switch c.Backend {
	case BackendRunc, BackendRunsc:
	default:
		return fmt.Errorf("%s: field \"backend\": unknown backend %q (want %q or %q): %w",
			c.Source, c.Backend, BackendRunc, BackendRunsc, errdefs.ErrInvalidArgument)
	}
	switch c.Runsc.Platform {
	case "systrap", "ptrace", "kvm":
	default:
		return fmt.Errorf("%s: field \"runsc.platform\": unknown platform %q (want systrap, ptrace or kvm): %w",
			c.Source, c.Runsc.Platform, errdefs.ErrInvalidArgument)
	}
	switch c.Runsc.Network {
	case "sandbox", "host", "none":
	default:
		return fmt.Errorf("%s: field \"runsc.network\": unknown network %q (want sandbox, host or none): %w",
			c.Source, c.Runsc.Network, errdefs.ErrInvalidArgument)
	}
	for k := range c.Runsc.Flags {
		if k == "" || strings.HasPrefix(k, "-") || strings.ContainsAny(k, "= \t\n") {
			return fmt.Errorf("%s: field \"runsc.flags\": invalid flag name %q (write it without dashes, e.g. \"overlay2\"): %w",
				c.Source, k, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// maxConfigSize bounds a configuration: real ones are a few hundred bytes,
// and the TOML decoder's cost grows faster than linearly on some shapes.
const maxConfigSize = 64 << 10

// ParseConfig decodes TOML, rejecting unknown keys, and applies defaults.
// source names the input in errors (a file path, or "ConfigBody").
func ParseConfig(data []byte, source string) (*Config, error) {
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d a configuration may have: %w", source, len(data), maxConfigSize, errdefs.ErrInvalidArgument)
	}
	c := &Config{}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", source, describeTOMLError(err), errdefs.ErrInvalidArgument)
	}
	c.Source = source
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// readConfigFile reads a regular file of at most maxConfigSize bytes. A
// path naming a directory, fifo or device is refused without reading it: a
// fifo would block the shim and /dev/zero would never end.
func readConfigFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, unix.ENOTDIR):
			return nil, fmt.Errorf("runtime config file %s does not exist: %w", path, errdefs.ErrNotFound)
		case errors.Is(err, unix.ENAMETOOLONG), errors.Is(err, unix.ELOOP):
			return nil, fmt.Errorf("runtime config file %s: %w: %w", path, errors.Unwrap(err), errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("open runtime config file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat runtime config file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("runtime config file %s is not a regular file (%s): %w", path, st.Mode().Type(), errdefs.ErrInvalidArgument)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read runtime config file %s: %w", path, err)
	}
	return data, nil
}

// LoadConfigFile reads and parses a TOML configuration file.
func LoadConfigFile(path string) (*Config, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(data, path)
	if err != nil {
		return nil, err
	}
	if c.RuntimeHandler == "" {
		c.RuntimeHandler = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	}
	return c, nil
}

// LoadDefaultConfig is used when containerd sends no options: the file named
// by $CONTAINERD_SHIM_CUSTOM_CONFIG, else DefaultConfigPath if present, else
// the built-in defaults.
func LoadDefaultConfig() (*Config, error) {
	if p := os.Getenv(ConfigEnv); p != "" {
		return LoadConfigFile(p)
	}
	c, err := LoadConfigFile(DefaultConfigPath)
	if errdefs.IsNotFound(err) {
		return DefaultConfig(), nil
	}
	return c, err
}

func describeTOMLError(err error) string {
	var derr *toml.DecodeError
	if errors.As(err, &derr) {
		row, col := derr.Position()
		if k := derr.Key(); len(k) > 0 {
			if strings.Contains(derr.Error(), "unknown field") {
				return fmt.Sprintf("line %d column %d: unknown option key %q", row, col, strings.Join(k, "."))
			}
			return fmt.Sprintf("line %d column %d: field %q: %s", row, col, strings.Join(k, "."), derr.Error())
		}
		return fmt.Sprintf("line %d column %d: %s", row, col, derr.Error())
	}
	var serr *toml.StrictMissingError
	if errors.As(err, &serr) {
		keys := make([]string, 0, len(serr.Errors))
		for _, e := range serr.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return fmt.Sprintf("unknown option key(s) %s", strings.Join(keys, ", "))
	}
	return err.Error()
}

// configFileName is where the shim keeps a task's resolved configuration in
// its bundle, so the "delete" action can clean up after a dead shim.
const configFileName = "custom-shim.json"

// ConfigFilePath returns the path of the resolved configuration in a bundle.
func ConfigFilePath(bundle string) string {
	return filepath.Join(bundle, configFileName)
}

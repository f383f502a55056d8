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
	"reflect"
	"strconv"
	"strings"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"
)

// Defaults for options that are not set anywhere.
const (
	// DefaultConfigPath is read when containerd sends no runtime options
	// (ctr without --runtime-config-path, nerdctl, containerd's client suite).
	DefaultConfigPath = "/etc/containerd/custom-shim.toml"
	// ConfigEnv names a config file that replaces DefaultConfigPath; the shim
	// inherits it from containerd's environment.
	ConfigEnv = "CONTAINERD_SHIM_CUSTOM_CONFIG"
)

// Config is the shim's TOML configuration, one per runtime handler:
//
//	backend = "runc"                  # a backend built into the shim
//	allow_backend_annotation = false  # honour io.containerd.custom.v2.backend
//	runtime_handler = ""              # metrics label; default: this file's name
//	pods_per_shim = 1                 # Pods one shim serves (docs/shared-shim.md)
//	[runc]                            # one table per backend, its own keys
//	...
//
// The backend tables belong to the backends: each registers its table's
// name and type in a Schema (pkg/runtime), and this package decodes them
// without knowing what they hold.
type Config struct {
	Backend                string
	AllowBackendAnnotation bool
	// RuntimeHandler names the handler in metrics (runtime_handler label);
	// containerd does not tell shims. Default: the config file's base name.
	RuntimeHandler string
	// PodsPerShim is how many Pods of this handler one shim process may
	// serve; 0 and 1 mean one shim per Pod (docs/shared-shim.md).
	PodsPerShim int

	// Process settings that apply whatever the backend; only containerd's
	// runc options carry them, per task.
	IoUID, IoGID int
	ShimCgroup   string

	// Sections are the backends' tables, keyed by backend name.
	Sections map[string]Section

	// Source says where the configuration came from, for errors and logs.
	Source string
}

// Section is one backend's table, decoded into the type its backend owns.
type Section interface {
	// Validate checks values that decoding cannot. Errors name the key as
	// field "<table>.<key>" and carry errdefs.ErrInvalidArgument.
	Validate() error
	// Binary is the runtime executable the settings name, "" for none.
	Binary() string
	// ClaimsBinary reports whether containerd's runc option BinaryName
	// (base name) names this backend's runtime (runsc for gVisor).
	ClaimsBinary(name string) bool
	// ApplyRuncOptions takes what containerd's runc options say about the
	// runtime (binary, root, cgroup driver, …).
	ApplyRuncOptions(ro *runcoptions.Options)
}

// Schema lists the backends a configuration may name; the first is the
// default.
type Schema struct {
	names []string
	newFn map[string]func() Section
}

// NewSchema starts a schema; Add registers backends.
func NewSchema() *Schema { return &Schema{newFn: map[string]func() Section{}} }

// Add registers a backend's table: newSection returns the backend's
// settings with their defaults, a pointer to a struct whose toml and json
// tags name its keys.
func (s *Schema) Add(name string, newSection func() Section) *Schema {
	s.names = append(s.names, name)
	s.newFn[name] = newSection
	return s
}

// Names lists the backends in registration order.
func (s *Schema) Names() []string { return append([]string(nil), s.names...) }

// Has reports whether name is a registered backend.
func (s *Schema) Has(name string) bool { _, ok := s.newFn[name]; return ok }

func (s *Schema) defaultBackend() string {
	if len(s.names) == 0 {
		return ""
	}
	return s.names[0]
}

func (s *Schema) unknownBackend(what, name string) error {
	return fmt.Errorf("%s: unknown backend %q (want %s): %w", what, name, quoteList(s.names), errdefs.ErrInvalidArgument)
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	switch len(q) {
	case 0:
		return "none"
	case 1:
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// DefaultConfig returns the built-in configuration.
func (s *Schema) DefaultConfig() *Config {
	c := &Config{Backend: s.defaultBackend(), Source: "built-in defaults", Sections: map[string]Section{}}
	for _, n := range s.names {
		c.Sections[n] = s.newFn[n]()
	}
	return c
}

// Section returns the settings of the selected backend.
func (c *Config) Section() Section { return c.Sections[c.Backend] }

// Validate checks values that TOML decoding cannot.
func (c *Config) validate(s *Schema) error {
	if !s.Has(c.Backend) {
		return fmt.Errorf("%s: %w", c.Source, s.unknownBackend("field \"backend\"", c.Backend))
	}
	if c.PodsPerShim < 0 || c.PodsPerShim > MaxPodsPerShim {
		return fmt.Errorf("%s: field \"pods_per_shim\": %d, want 1 to %d: %w", c.Source, c.PodsPerShim, MaxPodsPerShim, errdefs.ErrInvalidArgument)
	}
	for _, n := range s.names {
		if err := c.Sections[n].Validate(); err != nil {
			return fmt.Errorf("%s: %w", c.Source, err)
		}
	}
	return nil
}

// MaxPodsPerShim bounds a shared shim: past it one process's death ends
// too many Pods for the memory it saves (a Pod's share is already small).
const MaxPodsPerShim = 64

// maxConfigSize bounds a configuration: real ones are a few hundred bytes,
// and the TOML decoder's cost grows faster than linearly on some shapes.
const maxConfigSize = 64 << 10

// ParseConfig decodes TOML, rejecting unknown keys, and applies defaults.
// source names the input in errors (a file path, or "ConfigBody").
func (s *Schema) ParseConfig(data []byte, source string) (*Config, error) {
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d a configuration may have: %w", source, len(data), maxConfigSize, errdefs.ErrInvalidArgument)
	}
	c := s.DefaultConfig()
	c.Source = source
	var rk runcKeys
	if err := s.decodeTOML(data, c, &rk); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", source, describeTOMLError(err), errdefs.ErrInvalidArgument)
	}
	if len(rk.set) > 0 {
		// As containerd's runc options do over the defaults file: a
		// BinaryName picks the backend that claims it unless the table
		// names one, and the keys apply over the backend's table.
		if c.Backend == "" && rk.BinaryName != "" {
			c.Backend = s.backendFor(rk.BinaryName)
		}
		if c.Backend == "" {
			c.Backend = s.defaultBackend()
		}
		if sec, ok := c.Sections[c.Backend]; ok {
			sec.ApplyRuncOptions(&rk.Options)
		}
		c.IoUID, c.IoGID, c.ShimCgroup = int(rk.IoUid), int(rk.IoGid), rk.ShimCgroup
	}
	if c.Backend == "" {
		c.Backend = s.defaultBackend()
	}
	if err := c.validate(s); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeTOML decodes into a struct built for this schema (the common keys
// plus one field per backend table, holding the backend's defaults), so
// that the TOML decoder itself rejects unknown keys with their position.
func (s *Schema) decodeTOML(data []byte, c *Config, rk *runcKeys) error {
	fields := []reflect.StructField{
		{Name: "Backend", Type: reflect.TypeFor[string](), Tag: `toml:"backend"`},
		{Name: "AllowBackendAnnotation", Type: reflect.TypeFor[bool](), Tag: `toml:"allow_backend_annotation"`},
		{Name: "RuntimeHandler", Type: reflect.TypeFor[string](), Tag: `toml:"runtime_handler"`},
		{Name: "PodsPerShim", Type: reflect.TypeFor[int](), Tag: `toml:"pods_per_shim"`},
		// CRI passes a handler's whole options table as ConfigBody, TypeUrl
		// included.
		{Name: "TypeURL", Type: reflect.TypeFor[string](), Tag: `toml:"TypeUrl"`},
	}
	const common = 5
	// containerd's runc option keys, as a handler's table spells them
	// (runcKeys): after the backends' tables.
	for _, k := range runcKeyFields {
		fields = append(fields, reflect.StructField{Name: k.name, Type: k.typ, Tag: reflect.StructTag(fmt.Sprintf("toml:%q", k.name))})
	}
	sections := common + len(runcKeyFields)
	for i, n := range s.names {
		fields = append(fields, reflect.StructField{
			Name: fmt.Sprintf("Section%d", i),
			Type: reflect.TypeOf(c.Sections[n]).Elem(),
			Tag:  reflect.StructTag(fmt.Sprintf("toml:%q", n)),
		})
	}
	v := reflect.New(reflect.StructOf(fields)).Elem()
	for i, n := range s.names {
		v.Field(sections + i).Set(reflect.ValueOf(c.Sections[n]).Elem())
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v.Addr().Interface()); err != nil {
		return err
	}
	c.Backend = v.Field(0).String()
	c.AllowBackendAnnotation = v.Field(1).Bool()
	c.RuntimeHandler = v.Field(2).String()
	c.PodsPerShim = int(v.Field(3).Int())
	for i, k := range runcKeyFields {
		if f := v.Field(common + i); !f.IsNil() {
			k.set(&rk.Options, f.Elem())
			rk.set = append(rk.set, k.name)
		}
	}
	for i, n := range s.names {
		reflect.ValueOf(c.Sections[n]).Elem().Set(v.Field(sections + i))
	}
	return nil
}

// runcKeys are containerd's runc options written as top-level keys of a
// configuration: CRI passes a handler's whole options table as ConfigBody
// when the runtime type is not runc's, so a handler configured as
// containerd's docs say for runc (SystemdCgroup = true) arrives this way.
type runcKeys struct {
	runcoptions.Options
	set []string // the keys present, in runcKeyFields' order
}

// runcKeyFields are the runc option keys a configuration may carry: the
// ones configFromRuncOptions reads.
var runcKeyFields = []struct {
	name string
	typ  reflect.Type
	set  func(o *runcoptions.Options, v reflect.Value)
}{
	{"BinaryName", reflect.TypeFor[*string](), func(o *runcoptions.Options, v reflect.Value) { o.BinaryName = v.String() }},
	{"Root", reflect.TypeFor[*string](), func(o *runcoptions.Options, v reflect.Value) { o.Root = v.String() }},
	{"SystemdCgroup", reflect.TypeFor[*bool](), func(o *runcoptions.Options, v reflect.Value) { o.SystemdCgroup = v.Bool() }},
	{"NoPivotRoot", reflect.TypeFor[*bool](), func(o *runcoptions.Options, v reflect.Value) { o.NoPivotRoot = v.Bool() }},
	{"NoNewKeyring", reflect.TypeFor[*bool](), func(o *runcoptions.Options, v reflect.Value) { o.NoNewKeyring = v.Bool() }},
	{"CriuWorkPath", reflect.TypeFor[*string](), func(o *runcoptions.Options, v reflect.Value) { o.CriuWorkPath = v.String() }},
	{"ShimCgroup", reflect.TypeFor[*string](), func(o *runcoptions.Options, v reflect.Value) { o.ShimCgroup = v.String() }},
	{"IoUid", reflect.TypeFor[*uint32](), func(o *runcoptions.Options, v reflect.Value) { o.IoUid = uint32(v.Uint()) }},
	{"IoGid", reflect.TypeFor[*uint32](), func(o *runcoptions.Options, v reflect.Value) { o.IoGid = uint32(v.Uint()) }},
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
func (s *Schema) LoadConfigFile(path string) (*Config, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	c, err := s.ParseConfig(data, path)
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
func (s *Schema) LoadDefaultConfig() (*Config, error) {
	if p := os.Getenv(ConfigEnv); p != "" {
		return s.LoadConfigFile(p)
	}
	c, err := s.LoadConfigFile(DefaultConfigPath)
	if errdefs.IsNotFound(err) {
		return s.DefaultConfig(), nil
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

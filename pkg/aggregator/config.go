package aggregator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// The aggregator's configuration file (--config.file) is YAML, like the
// web configuration file (--web.config.file, exporter-toolkit's format)
// the same operator writes for the same process, like Prometheus' own, and
// like the Kubernetes ConfigMap that usually carries it. Every key is
// optional; a key that is absent takes the flag's value:
//
//	scrape_timeout: 2s                             # --scrape-timeout
//	shim_socket_dir: /run/containerd/custom/metrics        # --shim-socket-dir
//	state_dir: /run/containerd/custom/metrics-final        # --state-dir
//	exclude_families: [task_state]                 # families not exported
//	const_labels:                                  # added to every series
//	  node: ${NODE_NAME}
//
// ${VAR} in a const_labels value is replaced by the environment variable
// VAR (the DaemonSet sets NODE_NAME from the downward API); an unset VAR
// is an error, not an empty label.

// maxConfigBytes bounds the configuration file: a few hundred bytes in
// practice.
const maxConfigBytes = 1 << 20

// settings are what a reload may change. The aggregator holds them behind
// an atomic pointer and never mutates them: a round loads them once, so
// it sees one configuration from start to end.
type settings struct {
	scrapeTimeout time.Duration
	socketDir     string
	stateDir      string
	// exclude holds full family names ("containerd_shim_custom_task_state").
	exclude map[string]bool
	// labels are sorted by name.
	labels []labelPair
}

// labelsUsed are label names that the shims' or the aggregator's series
// carry: a constant label of the same name would collide.
var labelsUsed = []string{
	"backend", "runtime_handler", "reason", "state", "method", "result", "command",
	"containerd_namespace", "task_id", "namespace", "pod", "container",
	"version", "revision", "goversion", "how", "le", "quantile",
}

// ConfigError is a configuration the aggregator refused: the file, the
// line and the key where it went wrong (Line 0 and Key "" when the error
// is the whole file's).
type ConfigError struct {
	File string
	Line int
	Key  string
	Err  error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": %s", e.Key)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// settingsFrom builds and checks the settings of cfg (the flags), before
// any configuration file.
func settingsFrom(cfg Config) (*settings, error) {
	s := &settings{scrapeTimeout: cfg.ScrapeTimeout, socketDir: cfg.SocketDir, stateDir: cfg.StateDir, exclude: map[string]bool{}}
	for _, f := range cfg.ExcludeFamilies {
		name, err := familyName(f)
		if err != nil {
			return nil, fmt.Errorf("exclude_families: %w", err)
		}
		s.exclude[name] = true
	}
	for k, v := range cfg.ConstLabels {
		if err := checkLabel(k, v); err != nil {
			return nil, fmt.Errorf("const_labels: %w", err)
		}
		s.labels = append(s.labels, labelPair{k, v})
	}
	sortLabels(s.labels)
	if err := s.check(); err != nil {
		return nil, err
	}
	return s, nil
}

// check validates what the flags and a file have in common. It creates the
// directories if they are missing (as the aggregator always has): a
// directory that cannot be ours refuses the configuration.
func (s *settings) check() error {
	if s.scrapeTimeout <= 0 {
		return &fieldError{"scrape_timeout", fmt.Errorf("must be positive, not %s", s.scrapeTimeout)}
	}
	for _, d := range []struct{ key, dir string }{{"shim_socket_dir", s.socketDir}, {"state_dir", s.stateDir}} {
		if !filepath.IsAbs(d.dir) {
			return &fieldError{d.key, fmt.Errorf("must be an absolute path, not %q", d.dir)}
		}
		if err := metrics.EnsureDir(d.dir); err != nil {
			return &fieldError{d.key, err}
		}
	}
	return nil
}

// fieldError is a setting check refused, for the caller to name the line.
type fieldError struct {
	key string
	err error
}

func (e *fieldError) Error() string { return e.key + ": " + e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

// loadSettings reads the configuration file at path over base (the flags'
// settings) and validates the result. Every error is a *ConfigError.
func loadSettings(path string, base *settings) (*settings, []byte, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, nil, &ConfigError{File: path, Err: err}
	}
	s, err := parseSettings(path, data, base, os.LookupEnv)
	return s, data, err
}

func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxConfigBytes)
	}
	return data, nil
}

// parseSettings parses a configuration file's content: strictly (an
// unknown or repeated key is an error, so a typo is never silently
// ignored), with the line and key of every error.
func parseSettings(file string, data []byte, base *settings, lookupEnv func(string) (string, bool)) (*settings, error) {
	fail := func(line int, key string, err error) error {
		return &ConfigError{File: file, Line: line, Key: key, Err: err}
	}
	s := &settings{
		scrapeTimeout: base.scrapeTimeout, socketDir: base.socketDir, stateDir: base.stateDir,
		exclude: base.exclude, labels: base.labels,
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fail(yamlErrorLine(err), "", fmt.Errorf("malformed YAML: %w", err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fail(extra.Line, "", errors.New("more than one YAML document"))
	}
	if doc.Kind == 0 { // empty file: the flags' settings
		return s, nil
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return s, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fail(root.Line, "", fmt.Errorf("want a mapping of settings, not %s", nodeKind(root)))
	}
	seen := map[string]bool{}
	lines := map[string]int{} // of each key's value, for check's errors
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		if seen[key] {
			return nil, fail(k.Line, key, errors.New("set twice"))
		}
		seen[key] = true
		lines[key] = v.Line
		switch key {
		case "scrape_timeout":
			var str string
			if err := decodeScalar(v, &str); err != nil {
				return nil, fail(v.Line, key, err)
			}
			d, err := model.ParseDuration(str) // Prometheus' durations: 2s, 1m30s, 500ms
			if err != nil {
				return nil, fail(v.Line, key, err)
			}
			s.scrapeTimeout = time.Duration(d)
		case "shim_socket_dir", "state_dir":
			var dir string
			if err := decodeScalar(v, &dir); err != nil {
				return nil, fail(v.Line, key, err)
			}
			if !filepath.IsAbs(dir) {
				return nil, fail(v.Line, key, fmt.Errorf("must be an absolute path, not %q", dir))
			}
			if key == "state_dir" {
				s.stateDir = filepath.Clean(dir)
			} else {
				s.socketDir = filepath.Clean(dir)
			}
		case "exclude_families":
			if v.Kind != yaml.SequenceNode {
				return nil, fail(v.Line, key, fmt.Errorf("want a list of family names, not %s", nodeKind(v)))
			}
			s.exclude = map[string]bool{}
			for _, item := range v.Content {
				var f string
				if err := decodeScalar(item, &f); err != nil {
					return nil, fail(item.Line, key, err)
				}
				name, err := familyName(f)
				if err != nil {
					return nil, fail(item.Line, key, err)
				}
				s.exclude[name] = true
			}
		case "const_labels":
			if v.Kind != yaml.MappingNode {
				return nil, fail(v.Line, key, fmt.Errorf("want a mapping of label names to values, not %s", nodeKind(v)))
			}
			s.labels = nil
			names := map[string]bool{}
			for j := 0; j+1 < len(v.Content); j += 2 {
				ln, lv := v.Content[j], v.Content[j+1]
				lkey := key + "." + ln.Value
				if names[ln.Value] {
					return nil, fail(ln.Line, lkey, errors.New("set twice"))
				}
				names[ln.Value] = true
				var val string
				if err := decodeScalar(lv, &val); err != nil {
					return nil, fail(lv.Line, lkey, err)
				}
				val, err := expandEnv(val, lookupEnv)
				if err != nil {
					return nil, fail(lv.Line, lkey, err)
				}
				if err := checkLabel(ln.Value, val); err != nil {
					return nil, fail(ln.Line, lkey, err)
				}
				s.labels = append(s.labels, labelPair{ln.Value, val})
			}
			sortLabels(s.labels)
		default:
			return nil, fail(k.Line, key, fmt.Errorf("unknown key (known: %s)", strings.Join(configKeys, ", ")))
		}
	}
	if err := s.check(); err != nil {
		// A value from the flags has no line in the file (0).
		var fe *fieldError
		if errors.As(err, &fe) {
			return nil, fail(lines[fe.key], fe.key, fe.err)
		}
		return nil, fail(0, "", err)
	}
	return s, nil
}

var configKeys = []string{"scrape_timeout", "shim_socket_dir", "state_dir", "exclude_families", "const_labels"}

// decodeScalar decodes a scalar into a string; a list or mapping where a
// value is expected is an error, as is a null.
func decodeScalar(n *yaml.Node, out *string) error {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return fmt.Errorf("want a single value, not %s", nodeKind(n))
	}
	*out = n.Value
	return nil
}

func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "an empty value"
		}
		return fmt.Sprintf("the value %q", n.Value)
	}
	return "nothing"
}

// yamlErrorLine digs the line out of a YAML syntax error ("yaml: line 3:
// ..."); 0 if it has none. The YAML parser's own errors ("did not find
// expected ',' or ']'") count the line of the construct they could not
// close from 0 (and leave out line 0), its scanner's from 1: the former
// are made 1-based.
func yamlErrorLine(err error) int {
	var line int
	msg := err.Error()
	if i := strings.Index(msg, "line "); i >= 0 {
		_, _ = fmt.Sscanf(msg[i:], "line %d", &line) // no number: line stays 0, unknown
	}
	if strings.Contains(msg, "did not find expected") {
		line++ // and "line 0" is left out of the message
	}
	return line
}

// familyName turns "task_state" or "containerd_shim_custom_task_state"
// into the full name, checking it is one.
func familyName(s string) (string, error) {
	name := s
	if !strings.HasPrefix(name, metrics.Prefix) {
		name = metrics.Prefix + name
	}
	if !model.LegacyValidation.IsValidMetricName(name) {
		return "", fmt.Errorf("%q is not a metric family name", s)
	}
	return name, nil
}

func checkLabel(name, value string) error {
	switch {
	case !model.LegacyValidation.IsValidLabelName(name):
		return fmt.Errorf("%q is not a label name", name)
	case strings.HasPrefix(name, "__"):
		return fmt.Errorf("label names starting with __ are reserved")
	case slices.Contains(labelsUsed, name):
		return fmt.Errorf("label %q is already on the exported series", name)
	case value == "":
		return fmt.Errorf("label %q has an empty value (Prometheus drops such labels)", name)
	case len(value) > maxLabelValueLen || !utf8.ValidString(value):
		return fmt.Errorf("label %q: value is not valid UTF-8 of at most %d bytes", name, maxLabelValueLen)
	}
	return nil
}

// expandEnv replaces ${VAR} and $VAR; an unset variable is an error.
func expandEnv(s string, lookupEnv func(string) (string, bool)) (string, error) {
	var missing []string
	out := os.Expand(s, func(v string) string {
		val, ok := lookupEnv(v)
		if !ok {
			missing = append(missing, v)
		}
		return val
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("environment variable %s is not set", strings.Join(missing, ", "))
	}
	return out, nil
}

func sortLabels(ls []labelPair) {
	sort.Slice(ls, func(i, j int) bool { return ls[i].name < ls[j].name })
}

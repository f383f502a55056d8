package aggregator

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testFlags(t *testing.T) (*settings, string) {
	t.Helper()
	d := shortDir(t)
	s, err := settingsFrom(Config{SocketDir: filepath.Join(d, "s"), StateDir: filepath.Join(d, "f"), ScrapeTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s, d
}

func TestParseSettings(t *testing.T) {
	flags, d := testFlags(t)
	env := func(k string) (string, bool) {
		if k == "NODE_NAME" {
			return "node-7", true
		}
		return "", false
	}
	good := strings.Join([]string{
		"# the aggregator's settings",
		"scrape_timeout: 500ms",
		"shim_socket_dir: " + d + "/s2",
		"state_dir: " + d + "/f2",
		"exclude_families: [task_state, containerd_shim_custom_tasks]",
		"const_labels:",
		"  node: ${NODE_NAME}",
		"  cluster: prod",
	}, "\n")
	s, err := parseSettings("c.yml", []byte(good), flags, env)
	if err != nil {
		t.Fatal(err)
	}
	if s.scrapeTimeout != 500*time.Millisecond || s.socketDir != d+"/s2" || s.stateDir != d+"/f2" {
		t.Errorf("settings %+v", s)
	}
	if !s.exclude["containerd_shim_custom_task_state"] || !s.exclude["containerd_shim_custom_tasks"] || len(s.exclude) != 2 {
		t.Errorf("exclude %v", s.exclude)
	}
	if len(s.labels) != 2 || s.labels[0] != (labelPair{"cluster", "prod"}) || s.labels[1] != (labelPair{"node", "node-7"}) {
		t.Errorf("labels %v", s.labels)
	}
	if st, err := os.Stat(d + "/f2"); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state dir not made private: %v", err)
	}

	// Absent keys keep the flags' values; empty files too.
	for name, body := range map[string]string{"empty": "", "comment": "# nothing yet\n", "null": "~\n", "one key": "scrape_timeout: 1s\n"} {
		s, err := parseSettings("c.yml", []byte(body), flags, env)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if s.socketDir != flags.socketDir || s.stateDir != flags.stateDir || len(s.labels) != 0 {
			t.Errorf("%s: flags not kept: %+v", name, s)
		}
	}

	if err := os.WriteFile(d+"/file", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name, body string
		line       int
		key, msg   string
	}{
		{"malformed YAML", "scrape_timeout: 1s\nstate_dir: [oops\n", 2, "", "malformed YAML"},
		{"unclosed on line 1", "const_labels: {node: a\nscrape_timeout: 1s\n", 2, "", "malformed YAML"},
		{"tab indentation", "const_labels:\n\tnode: x\n", 2, "", "malformed YAML"},
		{"unknown key", "scrape_timeout: 1s\nscrape_timeot: 2s\n", 2, "scrape_timeot", "unknown key"},
		{"key set twice", "scrape_timeout: 1s\nscrape_timeout: 2s\n", 2, "scrape_timeout", "set twice"},
		{"bad duration", "scrape_timeout: 2x\n", 1, "scrape_timeout", `unknown unit "x" in duration "2x"`},
		{"unclosed mapping", "state_dir: /x\nconst_labels: {node: a\nscrape_timeout: 1s\n", 2, "", "malformed YAML"},
		{"bad indentation", "state_dir: /x\n  scrape_timeout: 1s\n", 2, "", "malformed YAML"},
		{"zero duration", "\n\nscrape_timeout: 0s\n", 3, "scrape_timeout", "must be positive"},
		{"duration as list", "scrape_timeout: [1s]\n", 1, "scrape_timeout", "want a single value"},
		{"relative dir", "state_dir: run/metrics\n", 1, "state_dir", "absolute path"},
		{"dir is a file", "shim_socket_dir: " + d + "/file\n", 1, "shim_socket_dir", "not a directory"},
		{"empty dir", "state_dir:\n", 1, "state_dir", "empty value"},
		{"families not a list", "exclude_families: task_state\n", 1, "exclude_families", "want a list"},
		{"bad family", "exclude_families:\n  - tasks\n  - task-state\n", 3, "exclude_families", "not a metric family name"},
		{"labels not a mapping", "const_labels: [node]\n", 1, "const_labels", "want a mapping"},
		{"bad label name", "const_labels:\n  1node: x\n", 2, "const_labels.1node", "not a label name"},
		{"reserved label", "const_labels:\n  __name__: x\n", 2, "const_labels.__name__", "reserved"},
		{"label on the series", "const_labels:\n  pod: x\n", 2, "const_labels.pod", "already on the exported series"},
		{"empty label", "const_labels:\n  node: \"\"\n", 2, "const_labels.node", "empty value"},
		{"unset variable", "const_labels:\n  node: ${NODE}\n", 2, "const_labels.node", "NODE is not set"},
		{"label twice", "const_labels:\n  node: a\n  node: b\n", 3, "const_labels.node", "set twice"},
		{"not a mapping", "- scrape_timeout: 1s\n", 1, "", "want a mapping"},
		{"two documents", "scrape_timeout: 1s\n---\nscrape_timeout: 2s\n", 2, "", "more than one YAML document"},
		{"TOML", "scrape_timeout = \"1s\"\n", 1, "", "want a mapping"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			s, err := parseSettings("/etc/agg.yml", []byte(c.body), flags, env)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, %+v; want a *ConfigError", err, s)
			}
			if ce.File != "/etc/agg.yml" || ce.Line != c.line || ce.Key != c.key || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q (line %d, key %q), want line %d, key %q, %q", err, ce.Line, ce.Key, c.line, c.key, c.msg)
			}
			if !strings.HasPrefix(err.Error(), "/etc/agg.yml:") {
				t.Errorf("error %q does not start with the file", err)
			}
		})
	}
}

func TestLoadSettingsFile(t *testing.T) {
	flags, d := testFlags(t)
	big := filepath.Join(d, "big.yml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", maxConfigBytes)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ path, msg string }{
		"missing":   {filepath.Join(d, "none.yml"), "no such file"},
		"directory": {d, "not a regular file"},
		"too large": {big, "larger than"},
	} {
		_, _, err := loadSettings(c.path, flags)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.File != c.path || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want a ConfigError naming %s: %s", name, err, c.path, c.msg)
		}
	}
}

func TestSettingsFromFlags(t *testing.T) {
	d := shortDir(t)
	base := Config{SocketDir: filepath.Join(d, "s"), StateDir: filepath.Join(d, "f"), ScrapeTimeout: time.Second}
	for name, tweak := range map[string]func(*Config){
		"relative dir":  func(c *Config) { c.StateDir = "x" },
		"bad family":    func(c *Config) { c.ExcludeFamilies = []string{"a b"} },
		"used label":    func(c *Config) { c.ConstLabels = map[string]string{"backend": "x"} },
		"empty label":   func(c *Config) { c.ConstLabels = map[string]string{"node": ""} },
		"invalid label": func(c *Config) { c.ConstLabels = map[string]string{"no-de": "x"} },
	} {
		c := base
		tweak(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A configuration file that does not load refuses the start.
	c := base
	c.ConfigFile = filepath.Join(d, "c.yml")
	if err := os.WriteFile(c.ConfigFile, []byte("scrape_timeout: 1s\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(c)
	if err == nil || !strings.Contains(err.Error(), c.ConfigFile+":2: bogus: unknown key") {
		t.Errorf("bad file at start: %v", err)
	}
}

package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/oci"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/crypto/bcrypt"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testcerts"
)

// curlScrape scrapes url with curl over TLS (trusting ca) as user:password
// and returns the HTTP status, the body and curl's error.
func curlScrape(ca, url, user, password string) (int, string, error) {
	args := []string{"-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", url}
	if ca != "" {
		args = append(args, "--cacert", ca)
	}
	if user != "" {
		args = append(args, "-u", user+":"+password)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("curl", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, "", fmt.Errorf("curl %s: %w: %s", url, err, strings.TrimSpace(stderr.String()))
	}
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	var code int
	if _, err := fmt.Sscan(s[i+1:], &code); err != nil {
		return 0, "", fmt.Errorf("curl %s: no status code after the body: %w", url, err)
	}
	return code, s[:i], nil
}

func parseExposition(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Errorf("parse the aggregator's output: %v", err)
		return nil
	}
	return fams
}

// TestAggregatorSecure runs the real aggregator as an operator would put
// it on a node shared with an in-cluster Prometheus: TLS and basic auth
// from a web configuration file, a configuration file changed (and
// broken) while it runs and while shims come and go, scraped throughout
// by curl over TLS. No scrape may fail, no counter may go backwards,
// wrong credentials get 401, and the output stays promtool-clean.
func TestAggregatorSecure(t *testing.T) {
	forEachOwnDaemon(t, func(t *testing.T, like *env) {
		dir, err := os.MkdirTemp("/tmp", "shim-agg-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		e := ownDaemon(t, like, func(c *harness.Config) {
			c.Env = append(c.Env, "CONTAINERD_SHIM_CUSTOM_METRICS_DIR="+dir)
		})
		pki := filepath.Join(dir, "pki")
		if err := os.Mkdir(pki, 0o700); err != nil {
			t.Fatal(err)
		}
		certs, err := testcerts.Generate(pki)
		if err != nil {
			t.Fatal(err)
		}
		hash, err := bcrypt.GenerateFromPassword([]byte("scrape-pw"), bcrypt.DefaultCost)
		if err != nil {
			t.Fatal(err)
		}
		webFile := filepath.Join(dir, "web.yml")
		writeFile(t, webFile, fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  prometheus: %s\n",
			certs.ServerCert, certs.ServerKey, hash))
		cfgDir := filepath.Join(dir, "config")
		if err := os.Mkdir(cfgDir, 0o755); err != nil {
			t.Fatal(err)
		}
		cfgFile := filepath.Join(cfgDir, "aggregator.yml")
		writeFile(t, cfgFile, "scrape_timeout: 2s\nconst_labels:\n  node: ${AGG_NODE}\n")

		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		var logs bytes.Buffer
		var logsMu sync.Mutex
		agg := exec.Command(aggregatorBinary(t),
			"--web.listen-address", addr, "--web.config.file", webFile, "--config.file", cfgFile,
			"--shim-socket-dir", filepath.Join(dir, "metrics"), "--state-dir", filepath.Join(dir, "metrics-final"))
		agg.Env = append(os.Environ(), "AGG_NODE=node-a")
		agg.Stderr = writerFunc(func(p []byte) (int, error) {
			logsMu.Lock()
			defer logsMu.Unlock()
			return logs.Write(p)
		})
		if err := agg.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			// Best effort: it may be gone already, and its exit status says
			// nothing the checks above did not.
			_ = agg.Process.Signal(syscall.SIGTERM)
			_ = agg.Wait()
			if t.Failed() {
				logsMu.Lock()
				t.Logf("aggregator log:\n%s", logs.String())
				logsMu.Unlock()
			}
		}()
		url := "https://" + addr + "/metrics"
		eventually(t, 30*time.Second, "aggregator serving over TLS", func() error {
			code, _, err := curlScrape(certs.CA, url, "prometheus", "scrape-pw")
			if err == nil && code != 200 {
				err = fmt.Errorf("status %d", code)
			}
			return err
		})

		// Refused: wrong password, unknown user, no credentials, no CA,
		// plain HTTP.
		for name, c := range map[string]struct{ user, pw string }{
			"wrong password": {"prometheus", "nope"}, "unknown user": {"admin", "scrape-pw"}, "no credentials": {"", ""},
		} {
			code, body, err := curlScrape(certs.CA, url, c.user, c.pw)
			if err != nil || code != 401 || strings.Contains(body, metricPrefix) {
				t.Errorf("%s: status %d, %v", name, code, err)
			}
		}
		if _, _, err := curlScrape("", url, "prometheus", "scrape-pw"); err == nil {
			t.Error("curl without the CA connected")
		}
		if code, body, err := curlScrape("", "http://"+addr+"/metrics", "prometheus", "scrape-pw"); err == nil && (code == 200 || strings.Contains(body, metricPrefix)) {
			t.Errorf("plain HTTP served: %d", code)
		}

		// Scrape all along, as Prometheus would (faster).
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var mu sync.Mutex
		var last string
		scrapes := 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			prev := map[string]float64{}
			for ctx.Err() == nil {
				code, body, err := curlScrape(certs.CA, url, "prometheus", "scrape-pw")
				if err != nil || code != 200 {
					t.Errorf("scrape %d during the run: status %d, %v", scrapes, code, err)
					return
				}
				fams := parseExposition(t, body)
				for name, f := range fams {
					if f.GetType() != dto.MetricType_COUNTER {
						continue
					}
					var sum float64 // over the series, whatever the node label is now
					for _, m := range f.GetMetric() {
						sum += m.GetCounter().GetValue()
					}
					if sum < prev[name] {
						t.Errorf("scrape %d: %s went backwards: %v -> %v", scrapes, name, prev[name], sum)
					}
					prev[name] = sum
				}
				mu.Lock()
				last, scrapes = body, scrapes+1
				mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		}()

		handler := "agg-" + runID
		opts := &runtimeoptions.Options{ConfigBody: []byte(fmt.Sprintf("backend = %q\nruntime_handler = %q\n", e.backend, handler))}
		if e.backend == "runsc" {
			opts.ConfigBody = append(opts.ConfigBody, []byte(fmt.Sprintf("[runsc]\nbinary_name = %q\n", runscBin))...)
		}
		scrapeNow := func() (string, map[string]*dto.MetricFamily) {
			t.Helper()
			code, body, err := curlScrape(certs.CA, url, "prometheus", "scrape-pw")
			if err != nil || code != 200 {
				t.Fatalf("scrape: %d %v", code, err)
			}
			return body, parseExposition(t, body)
		}
		reloadOK := func() float64 {
			_, fams := scrapeNow()
			return value(fams, "aggregator_config_last_reload_successful", nil)
		}
		const tasks = 6
		for i := range tasks {
			c := newContainer(t, e, containerID(t, fmt.Sprint("agg", i)), opts, oci.WithProcessArgs("true"))
			if st, _ := runToExit(t, c); st != 0 {
				t.Fatalf("task %d exit %d", i, st)
			}
			switch i {
			case 1: // relabel, drop the per-task gauge: picked up from the file
				writeFile(t, cfgFile, "scrape_timeout: 1s\nexclude_families: [task_state, tasks_deleted_total]\nconst_labels:\n  node: node-b\n")
				eventually(t, 20*time.Second, "reload to node-b", func() error {
					body, _ := scrapeNow()
					if !strings.Contains(body, `node="node-b"`) || strings.Contains(body, `node="node-a"`) {
						return fmt.Errorf("node-b label not in force")
					}
					if strings.Contains(body, metricPrefix+"tasks_deleted_total") {
						return fmt.Errorf("tasks_deleted_total still exported")
					}
					return nil
				})
			case 3: // a broken file: refused, node-b stays
				writeFile(t, cfgFile, "scrape_timeout: 1s\nconst_labels:\n  pod: x\n")
				eventually(t, 20*time.Second, "refused reload", func() error {
					if v := reloadOK(); v != 0 {
						return fmt.Errorf("last_reload_successful %v", v)
					}
					return nil
				})
				if body, _ := scrapeNow(); !strings.Contains(body, `node="node-b"`) {
					t.Errorf("the refused file changed the labels")
				}
			case 4: // fixed (tasks_deleted_total back, not reset), and applied by SIGHUP even before the watcher
				writeFile(t, cfgFile, "const_labels:\n  node: node-c\n")
				check(t, agg.Process.Signal(syscall.SIGHUP))
				eventually(t, 20*time.Second, "reload to node-c", func() error {
					if v := reloadOK(); v != 1 {
						return fmt.Errorf("last_reload_successful %v", v)
					}
					return nil
				})
			}
		}
		// Every shim has gone; the totals are exact under the last labels.
		eventually(t, 30*time.Second, "aggregator totals", func() error {
			if entries, _ := os.ReadDir(filepath.Join(dir, "metrics")); len(entries) != 0 {
				return fmt.Errorf("%d shim sockets still there", len(entries))
			}
			_, fams := scrapeNow()
			for _, name := range []string{"tasks_created_total", "tasks_started_total", "tasks_deleted_total"} {
				if v := value(fams, name, map[string]string{"runtime_handler": handler, "node": "node-c"}); v != tasks {
					return fmt.Errorf("%s = %v, want %d", name, v, tasks)
				}
			}
			return nil
		})
		// The scraper must have overlapped the run, not merely started: a
		// fast backend finishes the run in a few scrapes, so it goes on a
		// while (counting, and checking monotony) until it has 10.
		eventually(t, 30*time.Second, "10 scrapes", func() error {
			mu.Lock()
			defer mu.Unlock()
			if scrapes < 10 {
				return fmt.Errorf("%d scrapes", scrapes)
			}
			return nil
		})
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if !strings.Contains(last, `containerd_shim_custom_aggregator_config_last_reload_success_timestamp_seconds{node="node-c"}`) {
			t.Errorf("reload timestamp missing:\n%s", last)
		}
		promtoolLint(t, "the aggregator over TLS", last)
		logsMu.Lock()
		if strings.Contains(logs.String(), "not a loopback address") {
			t.Errorf("exposure warning on loopback:\n%s", logs.String())
		}
		if !strings.Contains(logs.String(), "configuration refused") || !strings.Contains(logs.String(), cfgFile+":3: const_labels.pod") {
			t.Errorf("the refused file is not logged with its line and key:\n%s", logs.String())
		}
		logsMu.Unlock()
		report(t, fmt.Sprintf("aggregator %s: TLS + basic auth scraped by curl %d times while %d shims came and went and the configuration changed 3 times (one refused); 401 for wrong credentials; counters monotonic; promtool clean", e.name(), scrapes, tasks))
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// writeFile replaces path atomically, as config management does.
func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

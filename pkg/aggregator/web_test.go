package aggregator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/custom-runtime/containerd-shim-custom-v2/internal/testcerts"
)

// webFixture is an aggregator served by run on a loopback port with the
// web configuration file the test writes.
type webFixture struct {
	*testAggregator
	certs   testcerts.Files
	webFile string
	addr    string
	stop    func() error
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func bcryptHash(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func newWebFixture(t *testing.T) *webFixture {
	t.Helper()
	d := shortDir(t)
	certs, err := testcerts.Generate(d)
	if err != nil {
		t.Fatal(err)
	}
	f := &webFixture{certs: certs, webFile: filepath.Join(d, "web.yml"), addr: freeAddr(t)}
	return f
}

// start runs the aggregator; it returns run's error if run ends within a
// moment (a refused start), nil once it serves.
func (f *webFixture) start(t *testing.T) error {
	t.Helper()
	f.testAggregator = newTestAggregator(t, func(c *Config) {
		c.Listen = []string{f.addr}
		c.WebConfigFile = f.webFile
	})
	startFakeShim(t, f.sockets, "s", "i", counterBody(3))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- f.run(ctx, make(chan os.Signal)) }()
	f.stop = func() error { cancel(); return <-errc }
	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case err := <-errc:
			errc <- err
			return err
		default:
		}
		if c, err := net.Dial("tcp", f.addr); err == nil {
			c.Close()
			t.Cleanup(func() {
				if err := f.stop(); err != nil {
					t.Errorf("run: %v", err)
				}
			})
			return nil
		}
		if time.Now().After(deadline) {
			t.Fatal("aggregator not listening")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// client trusts the test CA (or not), with the client certificate (or not).
func (f *webFixture) client(t *testing.T, trust, clientCert bool) *http.Client {
	t.Helper()
	cfg := &tls.Config{}
	if trust {
		pem, err := os.ReadFile(f.certs.CA)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RootCAs = x509.NewCertPool()
		cfg.RootCAs.AppendCertsFromPEM(pem)
	}
	if clientCert {
		c, err := tls.LoadX509KeyPair(f.certs.ClientCert, f.certs.ClientKey)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return &http.Client{Timeout: clientTimeout, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

// get returns the status and body of GET url with user:password ("" for
// none).
func get(c *http.Client, url, user, password string) (int, string, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 0, "", err
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func (f *webFixture) writeWeb(t *testing.T, body string) {
	t.Helper()
	writeAtomic(t, f.webFile, body)
}

func TestWebTLSAndBasicAuth(t *testing.T) {
	f := newWebFixture(t)
	f.writeWeb(t, fmt.Sprintf(`tls_server_config:
  cert_file: %s
  key_file: %s
basic_auth_users:
  prometheus: %s
`, f.certs.ServerCert, f.certs.ServerKey, bcryptHash(t, "s3cret")))
	if err := f.start(t); err != nil {
		t.Fatal(err)
	}
	url := "https://" + f.addr + "/metrics"
	c := f.client(t, true, false)
	code, body, err := get(c, url, "prometheus", "s3cret")
	if err != nil || code != 200 || !strings.Contains(body, startedKeyText+" 3") {
		t.Fatalf("good credentials: %d %v\n%s", code, err, body)
	}
	for name, creds := range map[string][2]string{
		"wrong password": {"prometheus", "guess"},
		"unknown user":   {"root", "s3cret"},
		"no credentials": {"", ""},
	} {
		code, body, err := get(c, url, creds[0], creds[1])
		if err != nil || code != http.StatusUnauthorized || strings.Contains(body, "containerd_shim_custom") {
			t.Errorf("%s: %d %v\n%s", name, code, err, body)
		}
	}
	// /healthz and the landing page are behind the same door.
	if code, _, _ := get(c, "https://"+f.addr+"/healthz", "", ""); code != http.StatusUnauthorized {
		t.Errorf("/healthz without credentials: %d", code)
	}
	if code, body, _ := get(c, "https://"+f.addr+"/", "prometheus", "s3cret"); code != 200 || !strings.Contains(body, "/metrics") {
		t.Errorf("landing page: %d %q", code, body)
	}
	// Plain HTTP on the TLS port: no metrics.
	code, body, err = get(&http.Client{Timeout: clientTimeout}, "http://"+f.addr+"/metrics", "prometheus", "s3cret")
	if err == nil && (code == 200 || strings.Contains(body, "containerd_shim_custom")) {
		t.Errorf("plain HTTP served: %d\n%s", code, body)
	}
	// A client that does not trust the CA.
	if _, _, err := get(f.client(t, false, false), url, "prometheus", "s3cret"); err == nil {
		t.Error("a client without the CA connected")
	}

	// Users change without a restart (exporter-toolkit reads the file per
	// request).
	f.writeWeb(t, fmt.Sprintf(`tls_server_config:
  cert_file: %s
  key_file: %s
basic_auth_users:
  prometheus: %s
`, f.certs.ServerCert, f.certs.ServerKey, bcryptHash(t, "rotated")))
	if code, _, _ := get(c, url, "prometheus", "s3cret"); code != http.StatusUnauthorized {
		t.Errorf("old password after rotation: %d", code)
	}
	if code, _, _ := get(c, url, "prometheus", "rotated"); code != 200 {
		t.Errorf("new password after rotation: %d", code)
	}

	// The file breaks while serving: connections fail, nothing falls back
	// to plain HTTP or to no authentication.
	for name, broken := range map[string]string{
		"malformed":     "tls_server_config: [\n",
		"TLS removed":   "basic_auth_users: {}\n",
		"cert missing":  fmt.Sprintf("tls_server_config:\n  cert_file: %s/none.crt\n  key_file: %s\n", filepath.Dir(f.webFile), f.certs.ServerKey),
		"unknown field": fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n  bogus: 1\n", f.certs.ServerCert, f.certs.ServerKey),
	} {
		f.writeWeb(t, broken)
		code, body, err := get(c, url, "prometheus", "rotated")
		if err == nil && (code == 200 || strings.Contains(body, "containerd_shim_custom")) {
			t.Errorf("%s: served over TLS: %d", name, code)
		}
		code, body, err = get(&http.Client{Timeout: clientTimeout}, "http://"+f.addr+"/metrics", "prometheus", "rotated")
		if err == nil && (code == 200 || strings.Contains(body, "containerd_shim_custom")) {
			t.Errorf("%s: served over plain HTTP: %d", name, code)
		}
	}
}

func TestWebClientCertificates(t *testing.T) {
	f := newWebFixture(t)
	f.writeWeb(t, fmt.Sprintf(`tls_server_config:
  cert_file: %s
  key_file: %s
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: %s
`, f.certs.ServerCert, f.certs.ServerKey, f.certs.CA))
	if err := f.start(t); err != nil {
		t.Fatal(err)
	}
	url := "https://" + f.addr + "/metrics"
	if code, body, err := get(f.client(t, true, true), url, "", ""); err != nil || code != 200 || !strings.Contains(body, startedKeyText) {
		t.Fatalf("with a client certificate: %d %v", code, err)
	}
	if code, _, err := get(f.client(t, true, false), url, "", ""); err == nil {
		t.Errorf("without a client certificate: %d", code)
	}
	// A client CA that did not sign the client's certificate.
	f.writeWeb(t, fmt.Sprintf(`tls_server_config:
  cert_file: %s
  key_file: %s
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: %s
`, f.certs.ServerCert, f.certs.ServerKey, f.certs.OtherCA))
	if code, _, err := get(f.client(t, true, true), url, "", ""); err == nil {
		t.Errorf("a certificate of another CA: %d", code)
	}
}

// A web configuration that does not load refuses the start, with an
// error that names the file and the cause; nothing listens.
func TestWebConfigRefused(t *testing.T) {
	f := newWebFixture(t)
	garbage := filepath.Join(filepath.Dir(f.webFile), "garbage.crt")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsPart := fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n", f.certs.ServerCert, f.certs.ServerKey)
	cases := map[string]struct{ body, msg string }{
		"malformed YAML":       {"tls_server_config: [\n", "yaml"},
		"unknown key":          {tlsPart + "  cert_fle: x\n", "field cert_fle not found"},
		"unknown top key":      {tlsPart + "basic_auth: {}\n", "field basic_auth not found"},
		"missing certificate":  {fmt.Sprintf("tls_server_config:\n  cert_file: %s/none.crt\n  key_file: %s\n", filepath.Dir(f.webFile), f.certs.ServerKey), "no such file"},
		"garbage certificate":  {fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n", garbage, f.certs.ServerKey), "X509KeyPair"},
		"key without cert":     {fmt.Sprintf("tls_server_config:\n  key_file: %s\n", f.certs.ServerKey), "missing one of cert or cert_file"},
		"plain password":       {tlsPart + "basic_auth_users:\n  prometheus: s3cret\n", "bcrypt"},
		"client CA, no policy": {tlsPart + "  client_ca_file: " + f.certs.CA + "\n", "Client Auth Policy"},
		"missing file":         {"", "no such file"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if c.body == "" {
				os.Remove(f.webFile)
			} else {
				f.writeWeb(t, c.body)
			}
			a := newTestAggregator(t, func(cfg *Config) {
				cfg.Listen = []string{f.addr}
				cfg.WebConfigFile = f.webFile
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := a.run(ctx, make(chan os.Signal))
			if err == nil || !strings.Contains(err.Error(), f.webFile) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("run: %v; want an error naming %s and %q", err, f.webFile, c.msg)
			}
			if c, err := net.Dial("tcp", f.addr); err == nil {
				c.Close()
				t.Fatal("something listens after a refused start")
			}
		})
	}
}

func TestExposureWarning(t *testing.T) {
	all := webSecurity{tls: true, users: true}
	for _, c := range []struct {
		addr string
		sec  webSecurity
		want string // "" for no warning
	}{
		{"127.0.0.1:9324", webSecurity{}, ""},
		{"[::1]:9324", webSecurity{}, ""},
		{"localhost:9324", webSecurity{}, ""},
		{"unix:///run/agg.sock", webSecurity{}, ""},
		{":9324", webSecurity{}, "plain HTTP without authentication"},
		{"0.0.0.0:9324", webSecurity{}, "plain HTTP without authentication"},
		{"10.1.2.3:9324", webSecurity{}, "reads the name of every pod"},
		{"node-1.example:9324", webSecurity{}, "plain HTTP"},
		{"10.1.2.3:9324", webSecurity{users: true}, "clear text"},
		{"10.1.2.3:9324", webSecurity{tls: true}, "TLS but without authentication"},
		{"10.1.2.3:9324", webSecurity{tls: true, clientCert: true}, ""},
		{"10.1.2.3:9324", all, ""},
	} {
		got := exposureWarning(c.addr, c.sec)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) || (got != "" && !strings.Contains(got, c.addr)) {
			t.Errorf("%s %+v: %q, want %q", c.addr, c.sec, got, c.want)
		}
	}
}

func TestServeUnixWithTLS(t *testing.T) {
	f := newWebFixture(t)
	f.writeWeb(t, fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  p: %s\n",
		f.certs.ServerCert, f.certs.ServerKey, bcryptHash(t, "pw")))
	sock := filepath.Join(shortDir(t), "agg.sock")
	a := newTestAggregator(t, func(c *Config) {
		c.Listen = []string{"unix://" + sock}
		c.WebConfigFile = f.webFile
	})
	startFakeShim(t, a.sockets, "s", "i", counterBody(2))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.run(ctx, make(chan os.Signal)) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	c := f.client(t, true, false)
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body, err := get(c, "https://localhost/metrics", "p", "pw")
		if err == nil && code == 200 && strings.Contains(body, startedKeyText+" 2") {
			break
		}
		if time.Now().After(deadline) || (err == nil && code != 200) {
			t.Fatalf("over the unix socket: %d %v", code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _, _ := get(c, "https://localhost/metrics", "p", "nope"); code != http.StatusUnauthorized {
		t.Errorf("wrong password over the unix socket: %d", code)
	}
}

const startedKeyText = `containerd_shim_custom_tasks_started_total{backend="runc",runtime_handler=""}`

// clientTimeout bounds a test request. Generous: an unknown user costs the
// server a bcrypt compare at cost 10 (exporter-toolkit's fixed hash, against
// user enumeration), seconds under -race on a loaded 2-core machine; a hang
// still fails.
const clientTimeout = time.Minute

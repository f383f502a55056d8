package aggregator

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/sirupsen/logrus"
	yamlv2 "go.yaml.in/yaml/v2"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// DefaultListen is the aggregator's default address (loopback: exposing
// it further is the operator's choice, with --web.config.file).
const DefaultListen = "127.0.0.1:9324"

// webSecurity is what a web configuration file protects the listeners
// with, for the warning on exposed addresses.
type webSecurity struct {
	tls        bool // tls_server_config present
	users      bool // basic_auth_users present
	clientCert bool // client certificates required and verified
}

// checkWebConfig validates the web configuration file as exporter-toolkit
// will read it (the file, its certificates and keys, the bcrypt hashes),
// so that a bad file refuses the start with its error instead of failing
// each connection later, and says what it enables.
func checkWebConfig(path string) (webSecurity, error) {
	if path == "" {
		return webSecurity{}, nil
	}
	if err := web.Validate(path); err != nil {
		return webSecurity{}, fmt.Errorf("web config file %s: %w", path, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return webSecurity{}, fmt.Errorf("web config file %s: %w", path, err)
	}
	var c web.Config
	if err := yamlv2.UnmarshalStrict(data, &c); err != nil { // as the toolkit reads it
		return webSecurity{}, fmt.Errorf("web config file %s: %w", path, err)
	}
	return webSecurity{
		tls:        c.TLSConfig.IsEnabled(),
		users:      len(c.Users) > 0,
		clientCert: c.TLSConfig.IsEnabled() && c.TLSConfig.ClientAuth == "RequireAndVerifyClientCert",
	}, nil
}

// exposureWarning names the risk of serving on addr with sec, "" if there
// is none: the output names every pod and task on the node.
func exposureWarning(addr string, sec webSecurity) string {
	if !exposed(addr) {
		return ""
	}
	const how = "set --web.config.file with tls_server_config and basic_auth_users (contrib/metrics/README.md)"
	switch {
	case !sec.tls && !sec.users:
		return fmt.Sprintf("listening on %s, not a loopback address, in plain HTTP without authentication: anyone who can reach it reads the name of every pod, container and task on this node; %s", addr, how)
	case !sec.tls:
		return fmt.Sprintf("listening on %s, not a loopback address, with basic auth but without TLS: passwords and metrics (every pod's name) cross the network in clear text; %s", addr, how)
	case !sec.users && !sec.clientCert:
		return fmt.Sprintf("listening on %s, not a loopback address, with TLS but without authentication: anyone who can reach it reads the name of every pod, container and task on this node; add basic_auth_users or client_auth_type: RequireAndVerifyClientCert", addr)
	}
	return ""
}

// exposed tells whether addr may be reachable from other hosts: anything
// but loopback and unix sockets (a host name other than localhost may be
// anything).
func exposed(addr string) bool {
	if strings.HasPrefix(addr, "unix://") {
		return false
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return true
	}
	if host == "localhost" {
		return false
	}
	ip := net.ParseIP(host)
	return ip == nil || !ip.IsLoopback()
}

// listen opens a TCP address or, with unix://, a socket 0660 (root's
// group unless the operator chgrps it for a scraping agent).
func listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		return l, nil
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("listen on %s: not an absolute path", addr)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	// A socket left by a dead aggregator goes; a live one's stays, and
	// listening fails.
	if err := metrics.CleanupSocket(path); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		_ = l.Close() // best effort on the error path
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// mux routes the telemetry path, /healthz (answers without scraping any
// shim) and, elsewhere than /, a landing page pointing at the metrics.
func (a *Aggregator) mux() *http.ServeMux {
	mux := http.NewServeMux()
	path := a.cfg.TelemetryPath
	mux.Handle("GET "+path, a.Handler())
	if path != "/healthz" {
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	}
	if path != "/" {
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintf(w, Name+"\nmetrics: %s\n", path)
		})
	}
	return mux
}

// serve starts one server per listen address through exporter-toolkit,
// which puts TLS and basic auth in front of the handler from the web
// configuration file and re-reads that file for every new connection
// (certificates, client CAs) and request (users). Servers, not one server
// for all listeners: web.Serve sets the server's handler and TLS
// configuration, so listeners may not share one.
//
// The web configuration is checked before anything listens. A file
// without tls_server_config serves plain HTTP, as the operator wrote; a
// file whose TLS part fails refuses the start; one that breaks later
// makes each new connection fail its handshake (a 500 for the basic auth
// part), never serve plain HTTP.
func (a *Aggregator) serve(ctx context.Context) (servers []*http.Server, errc <-chan error, err error) {
	sec, err := checkWebConfig(a.cfg.WebConfigFile)
	if err != nil {
		return nil, nil, err
	}
	var listeners []net.Listener
	defer func() {
		if err != nil {
			for _, l := range listeners {
				_ = l.Close() // best effort on the error path
			}
		}
	}()
	for _, addr := range a.cfg.Listen {
		l, err := listen(addr)
		if err != nil {
			return nil, nil, err
		}
		listeners = append(listeners, l)
		if w := exposureWarning(addr, sec); w != "" {
			log.G(ctx).Warn(w)
		}
	}
	flags := &web.FlagConfig{WebListenAddresses: &a.cfg.Listen, WebConfigFile: &a.cfg.WebConfigFile}
	logger := slog.New(logrusHandler{entry: log.G(ctx)})
	ch := make(chan error, len(listeners))
	mux := a.mux()
	for _, l := range listeners {
		srv := &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    16 << 10,
			// TLS handshake errors (a plain HTTP client, a wrong
			// certificate) are the client's: debug level.
			ErrorLog: stdlog.New(debugWriter{}, "", 0),
		}
		servers = append(servers, srv)
		go func() {
			err := web.Serve(l, srv, flags, logger)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			ch <- err
		}()
	}
	return servers, ch, nil
}

// debugWriter logs the http.Server's own errors at debug level.
type debugWriter struct{}

func (debugWriter) Write(p []byte) (int, error) {
	log.L.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}

// logrusHandler sends exporter-toolkit's slog records to the process's
// logrus logger, so that the aggregator logs in one format.
type logrusHandler struct {
	entry  *logrus.Entry
	prefix string // groups
}

func (h logrusHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.entry.Logger.IsLevelEnabled(logrusLevel(l))
}

func (h logrusHandler) Handle(_ context.Context, r slog.Record) error {
	fields := logrus.Fields{}
	r.Attrs(func(a slog.Attr) bool {
		fields[h.prefix+a.Key] = a.Value.Any()
		return true
	})
	h.entry.WithFields(fields).Log(logrusLevel(r.Level), r.Message)
	return nil
}

func (h logrusHandler) WithAttrs(as []slog.Attr) slog.Handler {
	fields := logrus.Fields{}
	for _, a := range as {
		fields[h.prefix+a.Key] = a.Value.Any()
	}
	return logrusHandler{entry: h.entry.WithFields(fields), prefix: h.prefix}
}

func (h logrusHandler) WithGroup(name string) slog.Handler {
	return logrusHandler{entry: h.entry, prefix: h.prefix + name + "."}
}

func logrusLevel(l slog.Level) logrus.Level {
	switch {
	case l >= slog.LevelError:
		return logrus.ErrorLevel
	case l >= slog.LevelWarn:
		return logrus.WarnLevel
	case l >= slog.LevelInfo:
		return logrus.InfoLevel
	}
	return logrus.DebugLevel
}

package install

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// API is the Kubernetes API as the installer's Pod reaches it, with its
// ServiceAccount: plain HTTP and JSON, for the few calls the installer
// makes (client-go would be most of the binary).
type API struct {
	URL   string                 // https://host:port
	Token func() (string, error) // bound tokens rotate: read per request
	HTTP  *http.Client
}

// serviceAccount is where the kubelet mounts a Pod's ServiceAccount.
const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

// InCluster is the API from a Pod: the address from its environment, the
// ServiceAccount's token and CA.
func InCluster() (*API, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("kubernetes API: not in a Pod (KUBERNETES_SERVICE_HOST/PORT unset)")
	}
	caPath := filepath.Join(serviceAccount, "ca.crt")
	ca, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("kubernetes API: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("kubernetes API: no certificate in %s", caPath)
	}
	return &API{
		URL: "https://" + net.JoinHostPort(host, port),
		Token: func() (string, error) {
			t, err := os.ReadFile(filepath.Join(serviceAccount, "token"))
			return strings.TrimSpace(string(t)), err
		},
		HTTP: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		}},
	}, nil
}

// errNotFound is a 404 from the API.
var errNotFound = errors.New("not found")

// do sends a request with body (nil: none, else JSON with contentType) and
// decodes a 2xx answer into out (nil: discarded). A refusal is an error
// with the API's own message (RBAC, admission policy).
func (a *API) do(ctx context.Context, method, path, contentType string, body, out any) error {
	var r io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(data)
	}
	token, err := a.Token()
	if err != nil {
		return fmt.Errorf("service account token: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.URL+path, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := a.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		if out == nil {
			return nil
		}
		return json.Unmarshal(data, out)
	}
	var st struct {
		Message string `json:"message"`
		Reason  string `json:"reason"`
	}
	msg := fmt.Sprintf("HTTP %d: %.200s", resp.StatusCode, data)
	if json.Unmarshal(data, &st) == nil && st.Message != "" {
		msg = fmt.Sprintf("%s (%s, HTTP %d)", st.Message, st.Reason, resp.StatusCode)
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%s %s: %s: %w", method, path, msg, errNotFound)
	}
	return fmt.Errorf("%s %s: %s", method, path, msg)
}

package install

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// LabelKey is the label a node carries, "true", once the runtime works on
// it: RuntimeClasses select on it, whatever the version (a rolling upgrade
// leaves nodes schedulable). VersionKey says which version is installed.
const (
	LabelKey   = "runtime.custom-runtime.io/installed"
	VersionKey = "runtime.custom-runtime.io/version"
)

// Node patches one Node's labels through the Kubernetes API, with the
// installer Pod's ServiceAccount (RBAC: patch on nodes; the chart's
// admission policy lets it change only this label on its own node).
type Node struct {
	Name   string
	API    string                 // https://host:port
	Token  func() (string, error) // bound tokens rotate: read per request
	Client *http.Client
}

// serviceAccount is where the kubelet mounts a Pod's ServiceAccount.
const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount"

// InCluster is the Node name as seen from a Pod on it: the API from the
// Pod's environment, the ServiceAccount's token and CA.
func InCluster(name string) (*Node, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, fmt.Errorf("label node %s: not in a Pod (KUBERNETES_SERVICE_HOST/PORT unset)", name)
	}
	ca, err := os.ReadFile(filepath.Join(serviceAccount, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("label node %s: %w", name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("label node %s: no certificate in %s", name, filepath.Join(serviceAccount, "ca.crt"))
	}
	return &Node{
		Name: name,
		API:  "https://" + net.JoinHostPort(host, port),
		Token: func() (string, error) {
			t, err := os.ReadFile(filepath.Join(serviceAccount, "token"))
			return strings.TrimSpace(string(t)), err
		},
		Client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		}},
	}, nil
}

// SetLabels sets the node's labels in one patch: a nil value removes its
// key (a label that is not there is no error).
func (n *Node) SetLabels(ctx context.Context, labels map[string]*string) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return err
	}
	token, err := n.Token()
	if err != nil {
		return fmt.Errorf("label node %s: service account token: %w", n.Name, err)
	}
	u := n.API + "/api/v1/nodes/" + url.PathEscape(n.Name)
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/merge-patch+json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := n.Client.Do(req)
	if err != nil {
		return fmt.Errorf("label node %s: %w", n.Name, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	// The API's Status says why (RBAC, admission policy).
	var st struct {
		Message string `json:"message"`
		Reason  string `json:"reason"`
	}
	if json.Unmarshal(data, &st) == nil && st.Message != "" {
		return fmt.Errorf("label node %s: %s (%s, HTTP %d)", n.Name, st.Message, st.Reason, resp.StatusCode)
	}
	return fmt.Errorf("label node %s: HTTP %d: %.200s", n.Name, resp.StatusCode, data)
}

package install

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
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
// admission policy lets it change only these labels on its own node).
type Node struct {
	Name string
	API  *API
}

// SetLabels sets the node's labels in one patch: a nil value removes its
// key (a label that is not there is no error).
func (n *Node) SetLabels(ctx context.Context, labels map[string]*string) error {
	patch := map[string]any{"metadata": map[string]any{"labels": labels}}
	if err := n.API.do(ctx, http.MethodPatch, "/api/v1/nodes/"+url.PathEscape(n.Name), "application/merge-patch+json", patch, nil); err != nil {
		return fmt.Errorf("label node %s: %w", n.Name, err)
	}
	return nil
}

package install

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// DaemonSet is the installer's own DaemonSet. Its Pods tell an uninstall
// from an upgrade by it: a rolling upgrade replaces a Pod while the
// DaemonSet stays; `helm uninstall` (or a delete) removes the DaemonSet.
type DaemonSet struct {
	API       *API
	Namespace string
	Name      string
}

func (d DaemonSet) path() string {
	return "/apis/apps/v1/namespaces/" + url.PathEscape(d.Namespace) + "/daemonsets/" + url.PathEscape(d.Name)
}

// Going reports whether the DaemonSet is gone or being deleted.
func (d DaemonSet) Going(ctx context.Context) (bool, error) {
	var ds struct {
		Metadata struct {
			DeletionTimestamp *string `json:"deletionTimestamp"`
		} `json:"metadata"`
	}
	err := d.API.do(ctx, http.MethodGet, d.path(), "", nil, &ds)
	if errors.Is(err, errNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("daemonset %s/%s: %w", d.Namespace, d.Name, err)
	}
	return ds.Metadata.DeletionTimestamp != nil, nil
}

// Drain deletes the DaemonSet in the foreground and waits until its Pods
// are gone (at most timeout): each Pod, told to stop while the DaemonSet
// is going, uninstalls from its node (Going), with the chart's RBAC still
// in place. `helm uninstall` runs it as a pre-delete hook, before it
// deletes the RBAC.
func (d DaemonSet) Drain(ctx context.Context, selector string, timeout time.Duration) error {
	err := d.API.do(ctx, http.MethodDelete, d.path(), "application/json",
		map[string]any{"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}, nil)
	if err != nil && !errors.Is(err, errNotFound) {
		return fmt.Errorf("delete daemonset %s/%s: %w", d.Namespace, d.Name, err)
	}
	deadline := time.Now().Add(timeout)
	pods := "/api/v1/namespaces/" + url.PathEscape(d.Namespace) + "/pods?labelSelector=" + url.QueryEscape(selector)
	for {
		var list struct {
			Items []struct{} `json:"items"`
		}
		if err := d.API.do(ctx, http.MethodGet, pods, "", nil, &list); err != nil {
			return fmt.Errorf("installer pods: %w", err)
		}
		if len(list.Items) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d installer pods still there after %s", len(list.Items), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

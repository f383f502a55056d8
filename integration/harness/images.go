package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

// BusyboxImage is the name under which EnsureBusybox's archive is imported
// (it also carries docker.io/library/busybox:latest).
const BusyboxImage = "ghcr.io/containerd/busybox:1.36"

// ModuleRoot returns the repository root: the first directory at or above the
// working directory (go test runs in the package directory) holding go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root: no go.mod at or above the working directory")
		}
		dir = parent
	}
}

// ImportImage imports an OCI/Docker archive into namespace and unpacks every
// image it names for the default snapshotter (overlayfs).
func ImportImage(ctx context.Context, c *client.Client, namespace, archivePath string) ([]client.Image, error) {
	ctx = namespaces.WithNamespace(ctx, namespace)
	f, err := os.Open(archivePath)
	if err != nil {
		return nil, fmt.Errorf("import image: %w", err)
	}
	defer f.Close()
	imgs, err := c.Import(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", archivePath, err)
	}
	out := make([]client.Image, 0, len(imgs))
	for _, meta := range imgs {
		img := client.NewImage(c, meta)
		if err := img.Unpack(ctx, ""); err != nil {
			return nil, fmt.Errorf("unpack %s: %w", meta.Name, err)
		}
		out = append(out, img)
	}
	return out, nil
}

// EnsureBusybox returns the path of the busybox archive: $BUSYBOX_IMAGE_TAR if
// set, else <module root>/.tools/images/busybox.tar, (re)built by
// scripts/mkimage.sh when missing or stale. It fails the test on error.
func EnsureBusybox(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("BUSYBOX_IMAGE_TAR"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("BUSYBOX_IMAGE_TAR: %v", err)
		}
		return p
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	outDir := filepath.Join(root, ".tools", "images")
	// mkimage.sh is cheap when the archive is current (a stamp check) and
	// serializes concurrent callers with flock.
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "mkimage.sh"), outDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/mkimage.sh: %v\n%s", err, out)
	}
	return filepath.Join(outDir, "busybox.tar")
}

// ImportBusybox imports the busybox archive (EnsureBusybox) into namespace
// and returns BusyboxImage. It fails the test on error.
func ImportBusybox(t testing.TB, c *client.Client, namespace string) client.Image {
	t.Helper()
	ctx := context.Background()
	if _, err := ImportImage(ctx, c, namespace, EnsureBusybox(t)); err != nil {
		t.Fatal(err)
	}
	img, err := c.GetImage(namespaces.WithNamespace(ctx, namespace), BusyboxImage)
	if err != nil {
		t.Fatalf("get %s: %v", BusyboxImage, err)
	}
	return img
}

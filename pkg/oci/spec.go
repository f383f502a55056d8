package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
)

// Annotations the shim reads from config.json.
const (
	// AnnotationGroup puts containers into one shim process.
	AnnotationGroup = "io.containerd.custom.v2.group"
	// AnnotationBackend picks a backend per container, when the handler's
	// configuration allows it (allow_backend_annotation).
	AnnotationBackend = "io.containerd.custom.v2.backend"

	annotationRuncGroup  = "io.containerd.runc.v2.group"
	AnnotationSandboxID  = "io.kubernetes.cri.sandbox-id"
	AnnotationCRIType    = "io.kubernetes.cri.container-type"
	AnnotationCRIName    = "io.kubernetes.cri.container-name"
	AnnotationPodName    = "io.kubernetes.cri.sandbox-name"
	AnnotationPodNS      = "io.kubernetes.cri.sandbox-namespace"
	CRITypeSandbox       = "sandbox"
	CRITypeContainer     = "container"
	maxAnnotationsLength = 1 << 20
)

// groupAnnotations decide which shim process hosts a container; the first
// one present wins.
var groupAnnotations = []string{AnnotationGroup, annotationRuncGroup, AnnotationSandboxID}

// ReadSpec reads and decodes a bundle's config.json. Decoding errors name the
// file and, where the JSON decoder knows it, the field and offset.
func ReadSpec(b bundle.Bundle) (*specs.Spec, error) {
	p := b.Spec()
	data, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", p, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", p, describeJSONError(err), errdefs.ErrInvalidArgument)
	}
	return &s, nil
}

func describeJSONError(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at offset %d: %v", se.Offset, se)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q: cannot decode JSON %s into %s (offset %d)", te.Field, te.Value, te.Type, te.Offset)
	}
	return err.Error()
}

// ValidateSpec checks what the shim relies on before asking a backend to
// create anything, so a bad bundle fails with a clear error and no side
// effects. rootfsMounted says the shim will mount the rootfs itself.
func ValidateSpec(b bundle.Bundle, s *specs.Spec, rootfsMounted bool) error {
	p := b.Spec()
	if s.Process == nil {
		return fmt.Errorf("%s: field \"process\": missing: %w", p, errdefs.ErrInvalidArgument)
	}
	if len(s.Process.Args) == 0 && s.Process.CommandLine == "" {
		return fmt.Errorf("%s: field \"process.args\": must not be empty: %w", p, errdefs.ErrInvalidArgument)
	}
	if s.Process.Cwd != "" && !filepath.IsAbs(s.Process.Cwd) {
		return fmt.Errorf("%s: field \"process.cwd\": %q is not an absolute path: %w", p, s.Process.Cwd, errdefs.ErrInvalidArgument)
	}
	if s.Root == nil || s.Root.Path == "" {
		return fmt.Errorf("%s: field \"root.path\": missing: %w", p, errdefs.ErrInvalidArgument)
	}
	for i, m := range s.Mounts {
		if m.Destination == "" {
			return fmt.Errorf("%s: field \"mounts[%d].destination\": missing: %w", p, i, errdefs.ErrInvalidArgument)
		}
		if !filepath.IsAbs(m.Destination) {
			return fmt.Errorf("%s: field \"mounts[%d].destination\": %q is not an absolute path: %w", p, i, m.Destination, errdefs.ErrInvalidArgument)
		}
	}
	n := 0
	for k, v := range s.Annotations {
		n += len(k) + len(v)
	}
	if n > maxAnnotationsLength {
		return fmt.Errorf("%s: field \"annotations\": %d bytes exceed the limit of %d: %w", p, n, maxAnnotationsLength, errdefs.ErrInvalidArgument)
	}
	if !rootfsMounted {
		root := s.Root.Path
		if !filepath.IsAbs(root) {
			root = filepath.Join(b.Path(), root)
		}
		fi, err := os.Stat(root)
		if err != nil {
			return fmt.Errorf("%s: field \"root.path\": rootfs %s: %w", p, root, errors.Join(err, errdefs.ErrInvalidArgument))
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s: field \"root.path\": rootfs %s is not a directory: %w", p, root, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// GroupID returns the id of the shim group a container belongs to: the first
// grouping annotation present, else the container's own id.
func GroupID(id string, annotations map[string]string) string {
	for _, a := range groupAnnotations {
		if g := annotations[a]; g != "" {
			return g
		}
	}
	return id
}

// SelectBackend applies the per-container backend annotation to a handler's
// configuration. The annotation is refused unless the handler allows it, so
// a workload cannot escape the sandbox its RuntimeClass chose.
func (sc *Schema) SelectBackend(c *Config, annotations map[string]string) error {
	want, ok := annotations[AnnotationBackend]
	if !ok || want == c.Backend {
		return nil
	}
	if !c.AllowBackendAnnotation {
		return fmt.Errorf("annotation %s=%q: backend selection by annotation is not allowed by %s (set allow_backend_annotation = true): %w",
			AnnotationBackend, want, c.Source, errdefs.ErrInvalidArgument)
	}
	if !sc.Has(want) {
		return sc.unknownBackend("annotation "+AnnotationBackend, want)
	}
	c.Backend = want
	return nil
}

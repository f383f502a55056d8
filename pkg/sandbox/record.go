package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/oci"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

// PodRecord is what "delete" needs to undo a pod's sandbox after its shim
// died: the shim never gets to clean up, and containerd 2.2 runs "delete"
// only for the sandbox, not for its containers.
type PodRecord struct {
	ID           string `json:"id"`
	CgroupParent string `json:"cgroup_parent,omitempty"`
	HostIPC      bool   `json:"host_ipc,omitempty"`
}

func writePodRecord(b bundle.Bundle, cfg *oci.Config, pod *podConfig) error {
	if err := oci.WriteConfigFile(b, cfg); err != nil {
		return err
	}
	data, err := json.Marshal(PodRecord{ID: filepathBase(b), CgroupParent: pod.cgroupParent, HostIPC: pod.hostIPC})
	if err != nil {
		return err
	}
	return bundle.WriteFileAtomic(b.PodConfig(), data, 0o600)
}

// ReadPodRecord reads what writePodRecord kept; ok is false for a bundle
// that is not a pod sandbox's.
func ReadPodRecord(b bundle.Bundle) (rec PodRecord, ok bool) {
	data, err := os.ReadFile(b.PodConfig())
	if err != nil {
		return rec, false
	}
	return rec, json.Unmarshal(data, &rec) == nil
}

// RecordContainer notes a container of the pod in the sandbox's bundle.
func RecordContainer(sandboxBundle bundle.Bundle, id, containerBundle string) {
	f, err := os.OpenFile(sandboxBundle.PodContainers(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		log.L.WithError(err).Debug("record pod container")
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s\n", id, containerBundle)
}

// PodContainers lists the recorded containers (id, bundle) of a pod.
func PodContainers(sandboxBundle bundle.Bundle) [][2]string {
	f, err := os.Open(sandboxBundle.PodContainers())
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][2]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, path, ok := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if ok {
			out = append(out, [2]string{id, path})
		}
	}
	return out
}

func filepathBase(b bundle.Bundle) string {
	p := strings.TrimSuffix(b.Path(), "/")
	return p[strings.LastIndexByte(p, '/')+1:]
}

func namespaceOf(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

// CleanupDead undoes the pod sandbox whose bundle b is, after its shim
// died: containerd runs "delete" with the sandbox's bundle (and containerd
// 2.2 with no other). cleanupContainer cleans one of the pod's containers
// by its id and bundle. It reports whether b was a pod sandbox's.
func CleanupDead(ctx context.Context, reg *runtime.Registry, namespace string, b bundle.Bundle, cleanupContainer func(id string, b bundle.Bundle)) bool {
	rec, ok := ReadPodRecord(b)
	if !ok {
		return false
	}
	cfg, err := reg.Schema().ReadConfigFile(b)
	if err != nil {
		log.G(ctx).WithError(err).Warn("read the sandbox's shim config; trying defaults")
		cfg = reg.Schema().DefaultConfig()
	}
	// The sandbox is stopped first: containerd kills this command after
	// 5 s, and on gVisor one SIGKILL of the sandbox ends every container
	// of the Pod (and empties its scope), where deleting them one runsc
	// call at a time could be cut short with the sandbox still running.
	ps, perr := reg.NewPod(cfg, &runtime.Pod{ID: rec.ID, Namespace: namespace, Bundle: b, CgroupParent: rec.CgroupParent})
	if perr == nil {
		if err := ps.Stop(ctx); err != nil {
			log.G(ctx).WithError(err).Warn("stop the pod's sandbox")
		}
	}
	for _, c := range PodContainers(b) {
		cleanupContainer(c[0], bundle.Bundle(c[1]))
	}
	if perr == nil {
		if err := ps.Delete(ctx); err != nil {
			log.G(ctx).WithError(err).Warn("delete the pod's sandbox")
		}
	}
	if files, err := criDirs(b, rec.ID, rec.HostIPC); err == nil {
		if err := files.remove(); err != nil {
			log.G(ctx).WithError(err).Warn("remove the pod's files")
		}
	}
	return true
}

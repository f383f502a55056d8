package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// crashLoop runs a pod on handler whose one container exits every few
// seconds; each time it is removed and created again, as kubelet does.
func (s *soak) crashLoop(ctx context.Context, handler string) {
	name := "crash-" + strings.TrimSuffix(strings.TrimPrefix(handler, "custom-"), "-sb")
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Uid: name, Namespace: "soak"},
		Linux:    &runtimeapi.LinuxPodSandboxConfig{CgroupParent: podParent + "/" + name},
	}
	var pod string
	for pod == "" {
		s.restarting.RLock()
		resp, err := s.cri.RunPodSandbox(context.Background(), &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
		s.restarting.RUnlock()
		if err == nil {
			pod = resp.PodSandboxId
			s.mu.Lock()
			s.pods = append(s.pods, pod)
			s.mu.Unlock()
			break
		}
		s.opError("run pod "+name, err)
		if ctx.Err() != nil {
			return
		}
		time.Sleep(2 * time.Second)
	}
	for attempt := uint32(0); ctx.Err() == nil; attempt++ {
		s.crashOnce(pod, cfg, attempt)
	}
	for i := 0; i < 30; i++ {
		_, err := s.cri.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod})
		if err == nil {
			_, err = s.cri.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod})
		}
		if err == nil {
			removePodParent(name)
			return
		}
		time.Sleep(time.Second)
	}
	s.opError("remove pod "+name, errors.New("gave up"))
}

// removePodParent removes the pod's cgroup parent, as kubelet does once
// the pod is gone (it made it): rmdir, so a cgroup the pod left below it
// keeps it there and shows as a leftover.
func removePodParent(name string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", podParent, name))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", podParent, name))
	for _, d := range dirs {
		_ = os.Remove(d)
	}
}

func (s *soak) crashOnce(pod string, cfg *runtimeapi.PodSandboxConfig, attempt uint32) {
	bg := context.Background()
	s.restarting.RLock()
	cc, err := s.cri.CreateContainer(bg, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "crasher", Attempt: attempt},
			Image:    &runtimeapi.ImageSpec{Image: criImage},
			Command:  []string{"sh", "-c", "sleep 2; exit 1"},
		},
		SandboxConfig: cfg,
	})
	if err == nil {
		_, err = s.cri.StartContainer(bg, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId})
		if err == nil {
			s.started.Add(1)
		}
	}
	s.restarting.RUnlock()
	if err != nil {
		s.opError("crash-loop container", err)
		if cc != nil {
			_, _ = s.cri.RemoveContainer(bg, &runtimeapi.RemoveContainerRequest{ContainerId: cc.ContainerId})
		}
		time.Sleep(2 * time.Second)
		return
	}
	// The exit reaches CRI only as the shim's TaskExit.
	deadline := time.Now().Add(exitWait)
	for {
		st, err := s.cri.ContainerStatus(bg, &runtimeapi.ContainerStatusRequest{ContainerId: cc.ContainerId})
		if err == nil && st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			s.exited.Add(1)
			break
		}
		if time.Now().After(deadline) {
			s.lostExit("crash-loop container " + cc.ContainerId)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for i := 0; i < 30; i++ {
		if _, err := s.cri.RemoveContainer(bg, &runtimeapi.RemoveContainerRequest{ContainerId: cc.ContainerId}); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	s.opError("remove container "+cc.ContainerId, errors.New("gave up"))
}

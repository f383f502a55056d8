// Command containerd-shim-custom-install installs containerd-shim-custom-v2
// on the node it runs on, from the installer DaemonSet (contrib/helm): see
// pkg/install. Settings come from the environment, as the DaemonSet sets
// them:
//
//	NODE_NAME            the node (the downward API's spec.nodeName); required
//	HANDLERS             handlers to register (custom-runc,custom-runsc,custom-runc-sb,custom-runsc-sb)
//	SYSTEMD_CGROUP       "true" for kubelet's systemd cgroup driver
//	RUNSC                runsc's path on the host ("" = on containerd's PATH)
//	RESTRICT_OOM_SCORE_ADJ "true" on hosts that deny lowering oom_score_adj
//	RESTART_CONTAINERD   "if-changed" (restart through nsenter into PID 1's
//	                     namespaces: systemctl restart containerd; needs hostPID)
//	                     or "never" (the node stays unlabelled until an
//	                     operator restarts containerd)
//	HOST_ROOT            the host's / in the Pod (/host)
//	CONTAINERD_SOCKET    containerd's socket on the host (/run/containerd/containerd.sock)
//
// "install" (the default) installs, retrying every 30 s until the node is
// labelled, then waits for SIGTERM and leaves everything in place (a
// rolling upgrade replaces the Pod). "uninstall" removes the label, the
// drop-in and the binaries once.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/install"
)

// version is set by the Makefile (git describe): the node label's value.
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	action := "install"
	if len(os.Args) > 1 {
		action = os.Args[1]
	}
	if action == "version" || action == "--version" {
		fmt.Println(version)
		return
	}
	i, err := fromEnv()
	if err != nil {
		log.G(ctx).WithError(err).Fatal("installer settings")
	}
	switch action {
	case "install":
		for {
			err := i.Install(ctx)
			if err == nil {
				break
			}
			log.G(ctx).WithError(err).Error("install; retrying in 30s")
			select {
			case <-ctx.Done():
				return
			case <-time.After(30 * time.Second):
			}
		}
		<-ctx.Done()
	case "uninstall":
		if err := i.Uninstall(ctx); err != nil {
			log.G(ctx).WithError(err).Fatal("uninstall")
		}
	default:
		log.G(ctx).Fatalf("unknown action %q: want install, uninstall or version", action)
	}
}

func fromEnv() (*install.Installer, error) {
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	nodeName := os.Getenv("NODE_NAME")
	if nodeName == "" {
		return nil, errors.New("NODE_NAME is unset (the DaemonSet sets it from spec.nodeName)")
	}
	node, err := install.InCluster(nodeName)
	if err != nil {
		return nil, err
	}
	host := env("HOST_ROOT", "/host")
	i := &install.Installer{
		Host:         host,
		Source:       filepath.Dir(mustExecutable()),
		Prefix:       "/usr/local/bin",
		DropInPath:   "/etc/containerd/conf.d/custom-runtime.toml",
		DefaultsPath: "/etc/containerd/custom-shim.toml",
		DropIn: install.DropIn{
			Handlers:            strings.Split(env("HANDLERS", "custom-runc,custom-runsc"), ","),
			SystemdCgroup:       os.Getenv("SYSTEMD_CGROUP") == "true",
			Runsc:               os.Getenv("RUNSC"),
			RestrictOOMScoreAdj: os.Getenv("RESTRICT_OOM_SCORE_ADJ") == "true",
		},
		Containerd: install.Containerd{Socket: filepath.Join(host, env("CONTAINERD_SOCKET", "/run/containerd/containerd.sock"))},
		Check: func(ctx context.Context) error {
			out, err := exec.CommandContext(ctx, "chroot", host, "/usr/local/bin/containerd-shim-custom-v2", "check").CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
			}
			return nil
		},
		Node:    node,
		Version: version,
		Wait:    2 * time.Minute,
		Logf:    func(format string, args ...any) { log.L.Infof(format, args...) },
	}
	switch p := env("RESTART_CONTAINERD", "never"); p {
	case "if-changed":
		i.Containerd.Restart = []string{"nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "systemctl", "restart", "containerd"}
	case "never":
	default:
		return nil, fmt.Errorf("RESTART_CONTAINERD %q: want if-changed or never", p)
	}
	return i, nil
}

func mustExecutable() string {
	p, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return p
}

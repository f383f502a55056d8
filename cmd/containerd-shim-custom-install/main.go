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
//	RESTART_CONTAINERD   "if-changed" (run RESTART_COMMAND when the drop-in
//	                     changed) or "never" (the node stays unlabelled until
//	                     an operator restarts containerd)
//	RESTART_COMMAND      the restart, split on spaces ("nsenter -t 1 -m -u -i -n -p --
//	                     systemctl restart containerd": PID 1's namespaces; needs hostPID)
//	HOST_ROOT            the host's / in the Pod (/host)
//	CONTAINERD_SOCKET    containerd's socket on the host (/run/containerd/containerd.sock)
//	CONTAINERD_CONFIG    its configuration on the host (/etc/containerd/config.toml);
//	                     the drop-in goes to conf.d/ beside it
//	PREFIX               where the host gets the binaries (/usr/local/bin): a
//	                     directory on containerd's PATH
//
//	POD_NAMESPACE, DAEMONSET  the installer's own DaemonSet (uninstall on delete)
//	SELECTOR             its Pods' label selector ("drain")
//
// "install" (the default) installs, retrying every 30 s until the node is
// labelled, then waits for SIGTERM: if its DaemonSet is still there, this
// is a rolling upgrade replacing the Pod and everything stays; if the
// DaemonSet is gone or being deleted, it uninstalls from the node.
// "uninstall" removes the labels, the drop-in and the binaries once.
// "drain" (the chart's pre-delete hook) deletes the DaemonSet in the
// foreground and waits until its Pods have uninstalled.
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
	if err := run(ctx, action); err != nil {
		log.G(ctx).WithError(err).Fatal(action)
	}
}

func run(ctx context.Context, action string) error {
	api, err := install.InCluster()
	if err != nil {
		return err
	}
	self := install.DaemonSet{API: api, Namespace: os.Getenv("POD_NAMESPACE"), Name: os.Getenv("DAEMONSET")}
	if action == "drain" {
		if self.Namespace == "" || self.Name == "" || os.Getenv("SELECTOR") == "" {
			return errors.New("POD_NAMESPACE, DAEMONSET and SELECTOR must be set")
		}
		return self.Drain(ctx, os.Getenv("SELECTOR"), 5*time.Minute)
	}
	i, err := fromEnv(api)
	if err != nil {
		return fmt.Errorf("installer settings: %w", err)
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
				return nil
			case <-time.After(30 * time.Second):
			}
		}
		<-ctx.Done()
		// SIGTERM: an upgrade, or the DaemonSet's deletion?
		bg, cancel := context.WithTimeout(context.Background(), 50*time.Second)
		defer cancel()
		if self.Name == "" {
			return nil
		}
		going, err := self.Going(bg)
		if err != nil || !going {
			return err
		}
		return i.Uninstall(bg)
	case "uninstall":
		return i.Uninstall(ctx)
	default:
		return fmt.Errorf("unknown action %q: want install, uninstall, drain or version", action)
	}
}

func fromEnv(api *install.API) (*install.Installer, error) {
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
	node := &install.Node{Name: nodeName, API: api}
	host := env("HOST_ROOT", "/host")
	prefix := env("PREFIX", "/usr/local/bin")
	config := env("CONTAINERD_CONFIG", "/etc/containerd/config.toml")
	if !filepath.IsAbs(prefix) || !filepath.IsAbs(config) {
		return nil, fmt.Errorf("PREFIX %q and CONTAINERD_CONFIG %q: want absolute paths on the host", prefix, config)
	}
	i := &install.Installer{
		Host:       host,
		Source:     filepath.Dir(mustExecutable()),
		Prefix:     prefix,
		ConfigPath: config,
		// The drop-in directory containerd 2.x imports by default, next
		// to the configuration it is given.
		DropInPath:   filepath.Join(filepath.Dir(config), "conf.d", "custom-runtime.toml"),
		DefaultsPath: "/etc/containerd/custom-shim.toml", // where the shim reads it (oci.DefaultConfigPath)
		DropIn: install.DropIn{
			Handlers:            strings.Split(env("HANDLERS", "custom-runc,custom-runsc"), ","),
			SystemdCgroup:       os.Getenv("SYSTEMD_CGROUP") == "true",
			Runsc:               os.Getenv("RUNSC"),
			RestrictOOMScoreAdj: os.Getenv("RESTRICT_OOM_SCORE_ADJ") == "true",
		},
		Containerd: install.Containerd{Socket: filepath.Join(host, env("CONTAINERD_SOCKET", "/run/containerd/containerd.sock"))},
		Check: func(ctx context.Context) error {
			out, err := exec.CommandContext(ctx, "chroot", host, filepath.Join(prefix, "containerd-shim-custom-v2"), "check").CombinedOutput()
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
		// systemd's, run in the host's namespaces (the Pod has hostPID);
		// another service manager or a k3s agent sets its own.
		i.Containerd.Restart = strings.Fields(env("RESTART_COMMAND", "nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd"))
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

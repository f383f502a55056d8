// Package install puts this runtime on a Kubernetes node, as the installer
// DaemonSet runs it (cmd/containerd-shim-custom-install, the Helm chart in
// contrib/helm): the binaries replaced by rename, so that running shims
// keep their inode and a new start gets the new file whole; containerd's
// drop-in written for the handlers the operator enabled; containerd
// restarted only when the drop-in changed and the operator allowed it; and
// only once containerd answers and the shim's check passes, the node
// labelled, so that RuntimeClasses' nodeSelector keeps Pods off nodes
// without the runtime. Uninstall undoes it in the other order: the label
// first, so that no new Pod is scheduled to a node losing the runtime.
package install

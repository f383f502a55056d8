package runc

import "runtime"

// The main goroutine keeps the main thread for itself, so no other
// goroutine ever runs there. libcontainer dedicates threads to work in a
// container's namespaces (the bind-mount source thread setns(2)es into the
// container's mount namespace) and lets them die by returning while
// locked; Go cannot end the main thread, so such a goroutine landing on it
// would leave the process's leader, and /proc/self/mountinfo with it, in
// the container's mount namespace for good (the cgroup library then finds
// no cgroup mounts). runc's own binary is short-lived and does not care; a
// shim is not. An init function's lock makes main run on that thread.
func init() {
	runtime.LockOSThread()
}

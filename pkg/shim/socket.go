package shim

import (
	"errors"
	"io/fs"
	"net"
	"strings"
	"syscall"
	"time"
)

// serverGone reports whether nothing serves the shim socket at address, so
// that it may be removed or taken over. connect(2) to a unix socket whose
// listener is gone fails at once with ECONNREFUSED (ENOENT: no file at
// all). Any other outcome - a connection, EAGAIN (a backlog full: a shim
// too busy to accept), a timeout - is a live shim, whose socket must stay.
// containerd's CanConnect gives up after 100 ms, which a loaded node
// exceeds: taken as dead, a live pod shim lost its socket to a
// container's "delete" and the pod could start no container again.
func serverGone(address string) bool {
	conn, err := net.DialTimeout("unix", strings.TrimPrefix(address, "unix://"), 5*time.Second)
	if err == nil {
		_ = conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist)
}

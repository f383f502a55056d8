package harness

import (
	"bytes"

	"golang.org/x/sys/unix"
)

// KernelRelease is the host kernel's release (uname -r).
func KernelRelease() (string, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "", err
	}
	return string(bytes.TrimRight(uts.Release[:], "\x00")), nil
}

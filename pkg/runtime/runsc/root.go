package runsc

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// list returns the ids of the containers in the backend's runsc root
// (none when runsc cannot tell).
func (b *Backend) list(ctx context.Context) []string {
	var out bytes.Buffer
	if err := b.run(ctx, "list", nil, &out, "list", "--quiet"); err != nil {
		log.G(ctx).WithError(err).Debug("runsc list")
		return nil
	}
	return strings.Fields(out.String())
}

// removeRoot removes a group's runsc root once its last container is gone.
// runsc leaves two things of its own there: "null-netns", a network
// namespace bind-mounted for sandboxes without network, which must be
// unmounted or it pins the namespace, and the lock file of a container
// whose create ended before its state was written (found by make soak: a
// pod removed while its crash-looping container was being created kept
// its root and null-netns). Anything else means a container of the group
// still lives there.
func removeRoot(root string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Name() != "null-netns" && !removeOrphanLock(root, e.Name()) {
			return
		}
	}
	nullNetns := filepath.Join(root, "null-netns")
	// The delete succeeded whatever happens here. The unmount fails if
	// nothing is mounted; a mount that stays makes the remove fail (EBUSY).
	_ = unix.Unmount(nullNetns, unix.MNT_DETACH)
	if err := os.Remove(nullNetns); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.L.WithError(err).WithField("root", root).Warn("runsc: null-netns left: it pins a network namespace")
	}
	_ = os.Remove(root) // not empty: a container of the group came meanwhile, and it is theirs
}

// removeOrphanLock removes name, in root, if it is a container's lock file
// ("<id>_sandbox:<sandbox>.lock") with no state file beside it that nobody
// holds (runsc takes it with flock while it works on the container); it
// reports whether name is gone.
func removeOrphanLock(root, name string) bool {
	base, ok := strings.CutSuffix(name, ".lock")
	if !ok || !strings.Contains(base, "_sandbox:") {
		return false
	}
	if _, err := os.Stat(filepath.Join(root, base+".state")); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	f, err := os.Open(filepath.Join(root, name))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return false // runsc is at work on it
	}
	return os.Remove(f.Name()) == nil
}

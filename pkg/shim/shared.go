package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	cshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/shim/pool"
)

// PoolRoot holds the pools of shared shims (docs/shared-shim.md).
const PoolRoot = "/run/containerd/custom/pools"

// poolGroup maps a start's group to its shared shim's when the handler
// sets pods_per_shim: a Pod's own start (the sandbox's, or the pause
// container's, whose group is its own id) is admitted to a slot; a later
// container of the Pod (group: the Pod's id) goes where the Pod went. The
// returned func lets the pool's lock go (a no-op without a pool). Pools
// are per containerd (containerdAddress) and namespace.
func poolGroup(f *flags, containerdAddress, group, bundle string, opts *anypb.Any, addressOf func(string) (string, error)) (_ string, poolDir string, _ func(), _ error) {
	noop := func() {}
	cfg, err := backends().Schema().ConfigFromOptions(opts)
	if err != nil {
		// A bad configuration is create's to report, with its file and
		// field, and leaving nothing behind; start has nothing to undo.
		return group, "", noop, nil //nolint:nilerr // reported by create
	}
	if cfg.PodsPerShim <= 1 {
		return group, "", noop, nil
	}
	raw, err := optionsBytes(opts)
	if err != nil {
		return "", "", nil, err
	}
	key := append([]byte(containerdAddress+"\x00"), raw...)
	p, err := pool.Open(PoolRoot, f.namespace, key, cfg.PodsPerShim)
	if err != nil {
		return "", "", nil, err
	}
	if group != f.id {
		// A container of Pod group: its Pod's slot, if the Pod has one.
		if g, ok, err := p.GroupOf(group); err != nil {
			return "", "", nil, err
		} else if ok {
			return g, p.Dir(), noop, nil
		}
		return group, "", noop, nil
	}
	alive := func(g string) bool {
		address, err := addressOf(g)
		return err == nil && !serverGone(address)
	}
	g, release, err := p.Admit(f.id, bundle, alive)
	if err != nil {
		return "", "", nil, fmt.Errorf("pods_per_shim: %w", err)
	}
	return g, p.Dir(), release, nil
}

// optionsBytes is the handler's options as the pool's key: the same bytes
// for every start of one handler (deterministic encoding).
func optionsBytes(opts *anypb.Any) ([]byte, error) {
	if opts == nil {
		return nil, nil
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(opts)
	if err != nil {
		return nil, fmt.Errorf("encode runtime options: %w", err)
	}
	return data, nil
}

// errHeld: a shared shim's slot is empty but a sandbox still needs it.
var errHeld = errors.New("a sandbox still holds the shim")

// sharedHold is what keeps a shared shim (a slot of a pool) from exiting:
// a Pod admitted to its slot, even one whose sandbox or pause task is not
// created yet, or a sandbox that still needs it. The decision is taken
// under the pool's lock, and an exiting shim removes its socket before the
// lock goes: a start after it starts a new shim instead of getting an
// address that is about to close. holds is the sandbox service's Holds,
// whose false is final, so it is asked only once the slot is empty.
func sharedHold(ctx context.Context, f *flags, holds func() bool) func() bool {
	p, err := pool.OpenDir(f.pool)
	if err != nil {
		log.G(ctx).WithError(err).Error("shared shim: its pool is unreadable; it stays until killed")
		return func() bool { return true }
	}
	return func() bool {
		exit, err := p.ExitIfEmpty(f.group, func() error {
			if holds() {
				return errHeld
			}
			if err := cshim.RemoveSocket("unix://" + f.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		})
		if err != nil && !errors.Is(err, errHeld) {
			log.G(ctx).WithError(err).Warn("shared shim: cannot tell whether its slot is empty; staying")
		}
		return !exit
	}
}

// leavePool takes Pod id out of its shared shim's slot, if it has one
// (ShutdownSandbox, the pause task's delete, `delete` after a shim died).
func leavePool(ctx context.Context, namespace, id string) {
	if err := pool.Leave(PoolRoot, namespace, id); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Warn("shared shim: the Pod's slot stays taken until its shim exits")
	}
}

// sharedLog is a shared shim's log output. fd 2 is the log fifo of one of
// its Pods' bundles, which containerd reads only until that Pod's shim
// connection closes: when a write finds the fifo without a reader (EPIPE),
// fd 2 moves to another of the slot's Pods' fifos (panics, written to fd 2
// by the Go runtime, follow).
type sharedLog struct {
	bundles func() ([]string, error) // the slot's Pods' bundles

	mu      sync.Mutex
	current string    // the bundle whose fifo fd 2 is
	retryAt time.Time // no fifo had a reader: lines are dropped until then
}

func (l *sharedLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := os.Stderr.Write(b)
	if !errors.Is(err, syscall.EPIPE) {
		return n, err
	}
	if time.Now().Before(l.retryAt) || !l.relink() {
		// No reader anywhere (containerd down): the line is lost, as
		// containerd's own shims lose it; the shim goes on.
		if l.retryAt.IsZero() || time.Now().After(l.retryAt) {
			l.retryAt = time.Now().Add(5 * time.Second)
		}
		return len(b), nil
	}
	return os.Stderr.Write(b)
}

// relink points fd 2 at the log fifo of another Pod of the slot that has a
// reader; the caller holds l.mu.
func (l *sharedLog) relink() bool {
	bundles, err := l.bundles()
	if err != nil {
		return false
	}
	for _, b := range bundles {
		if b == l.current {
			continue
		}
		// Non-blocking, the open fails at once (ENXIO) on a fifo nobody
		// reads; containerd holds the read end while it serves the Pod.
		fd, err := unix.Open(filepath.Join(b, "log"), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		// Blocking writes, as on the fifo the shim was started with.
		err = unix.SetNonblock(fd, false)
		if err == nil {
			err = unix.Dup3(fd, int(os.Stderr.Fd()), 0)
		}
		_ = unix.Close(fd) // fd 2 is the copy that stays
		if err != nil {
			continue
		}
		l.current = b
		l.retryAt = time.Time{}
		return true
	}
	return false
}

// serveShared sets up a shared shim's process after its log is open: its
// log follows its Pods (sharedLog), and its working directory, the first
// Pod's bundle, is left for "/" (that bundle goes with its Pod; relative
// paths in libcontainer and Getwd would fail after).
func serveShared(f *flags) error {
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	p, err := pool.OpenDir(f.pool)
	if err != nil {
		return err
	}
	log.L.Logger.SetOutput(&sharedLog{current: wd, bundles: func() ([]string, error) { return p.Bundles(f.group) }})
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("shared shim: leave the first pod's bundle: %w", err)
	}
	return nil
}

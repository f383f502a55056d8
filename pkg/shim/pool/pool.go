// Package pool admits Pods to shared shims (a handler's pods_per_shim):
// the Pods of one handler in one namespace fill slots of N, each slot a
// shim group served by one process. Its state is files under a directory,
// changed only under an flock(2) of that directory's lock file, so that the
// short-lived `start` and `delete` processes and the long-lived servers
// agree on who belongs where:
//
//	<root>/<ns>-<key>/lock
//	<root>/<ns>-<key>/slot-<k>/<pod>   one file per Pod admitted to slot k: its bundle
//	<root>/pods/<ns>/<pod>             "<ns>-<key> <group>": where the Pod is,
//	                                   for its later containers and its delete
//
// The lock is never held across a backend command: only across a slot
// choice and the bind of its socket, or a server's decision to exit.
package pool

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Pool is the slots of one handler in one namespace.
type Pool struct {
	root, ns string
	dir      string
	key      string
	size     int
}

// Open returns the pool that key sets apart (a handler's runtime options
// and its containerd's address: two containerds on one node have pools of
// their own) in namespace, with size Pods per shim (at least 2).
func Open(root, namespace string, key []byte, size int) (*Pool, error) {
	if size < 2 {
		return nil, fmt.Errorf("pods per shim %d: a pool needs at least 2", size)
	}
	if err := checkName("namespace", namespace); err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write([]byte(namespace))
	h.Write([]byte{0})
	h.Write(key)
	name := hex.EncodeToString(h.Sum(nil))[:16]
	p := &Pool{root: root, ns: namespace, dir: filepath.Join(root, namespace+"-"+name), key: name, size: size}
	for _, d := range []string{p.dir, filepath.Join(root, "pods", namespace)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("pool %s: %w", d, err)
		}
	}
	return p, nil
}

// indexPath is where pod's place is kept.
func indexPath(root, namespace, pod string) string {
	return filepath.Join(root, "pods", namespace, pod)
}

// OpenDir is the pool at dir (a server's: start passes it the directory),
// for ExitIfEmpty.
func OpenDir(dir string) (*Pool, error) {
	base := filepath.Base(dir)
	const keyLen = 16
	if len(base) < keyLen+2 || base[len(base)-keyLen-1] != '-' {
		return nil, fmt.Errorf("pool directory %s: %w", dir, errMalformed)
	}
	return &Pool{root: filepath.Dir(dir), ns: base[:len(base)-keyLen-1], dir: dir, key: base[len(base)-keyLen:]}, nil
}

// Dir is the pool's directory.
func (p *Pool) Dir() string { return p.dir }

// Group is slot k's shim group name.
func (p *Pool) Group(k int) string { return "pool-" + p.key + "-" + strconv.Itoa(k) }

// slotOf is the slot of a group of this pool, or -1.
func (p *Pool) slotOf(group string) int {
	s, ok := strings.CutPrefix(group, "pool-"+p.key+"-")
	if !ok {
		return -1
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 0 {
		return -1
	}
	return k
}

// lock takes the pool's lock; the returned func lets it go.
func (p *Pool) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(p.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pool lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		_ = f.Close() // the lock error says it all
		return nil, fmt.Errorf("pool lock: %w", err)
	}
	return func() { _ = f.Close() }, nil // closing the file lets the lock go
}

func (p *Pool) slotDir(k int) string { return filepath.Join(p.dir, "slot-"+strconv.Itoa(k)) }

// members lists slot k's Pods.
func (p *Pool) members(k int) ([]string, error) {
	entries, err := os.ReadDir(p.slotDir(k))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	pods := make([]string, 0, len(entries))
	for _, e := range entries {
		pods = append(pods, e.Name())
	}
	return pods, nil
}

// Admit places pod in the first slot with room and returns its group, with
// the pool's lock held: the caller binds the group's socket (or finds it
// served) before it calls release, so that no other start takes a slot
// whose shim is starting for dead. alive tells whether a group's shim
// serves; a slot with members whose shim does not is a dead shim's, whose
// Pods containerd is deleting: it is emptied and reused. A Pod admitted
// before gets its slot again. bundle is the Pod's bundle directory, whose
// log fifo containerd reads (Bundles).
func (p *Pool) Admit(pod, bundle string, alive func(group string) bool) (group string, release func(), err error) {
	if err := checkName("pod id", pod); err != nil {
		return "", nil, err
	}
	release, err = p.lock()
	if err != nil {
		return "", nil, err
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	if g, ok, err := p.groupOfLocked(pod); err != nil {
		return "", nil, err
	} else if ok {
		return g, release, nil
	}
	for k := 0; ; k++ {
		pods, err := p.members(k)
		if err != nil {
			return "", nil, fmt.Errorf("pool slot %d: %w", k, err)
		}
		if len(pods) > 0 && !alive(p.Group(k)) {
			for _, dead := range pods {
				if err := p.removeLocked(k, dead); err != nil {
					return "", nil, err
				}
			}
			pods = nil
		}
		if len(pods) >= p.size {
			continue
		}
		if err := os.MkdirAll(p.slotDir(k), 0o700); err != nil {
			return "", nil, fmt.Errorf("pool slot %d: %w", k, err)
		}
		if err := os.WriteFile(filepath.Join(p.slotDir(k), pod), []byte(bundle), 0o600); err != nil {
			return "", nil, fmt.Errorf("admit pod %s: %w", pod, err)
		}
		if err := os.WriteFile(indexPath(p.root, p.ns, pod), []byte(filepath.Base(p.dir)+" "+p.Group(k)), 0o600); err != nil {
			_ = os.Remove(filepath.Join(p.slotDir(k), pod)) // the write error says it all
			return "", nil, fmt.Errorf("admit pod %s: %w", pod, err)
		}
		return p.Group(k), release, nil
	}
}

// Bundles lists the bundle directories of group's Pods, in no order.
func (p *Pool) Bundles(group string) ([]string, error) {
	k := p.slotOf(group)
	if k < 0 {
		return nil, fmt.Errorf("pool: group %q is not this pool's", group)
	}
	release, err := p.lock()
	if err != nil {
		return nil, err
	}
	defer release()
	pods, err := p.members(k)
	if err != nil {
		return nil, fmt.Errorf("pool slot %d: %w", k, err)
	}
	var bundles []string
	for _, pod := range pods {
		data, err := os.ReadFile(filepath.Join(p.slotDir(k), pod))
		if err != nil {
			continue // left since the listing
		}
		if b := string(data); filepath.IsAbs(b) {
			bundles = append(bundles, b)
		}
	}
	return bundles, nil
}

// GroupOf is the group pod was admitted to.
func (p *Pool) GroupOf(pod string) (string, bool, error) {
	if err := checkName("pod id", pod); err != nil {
		return "", false, err
	}
	release, err := p.lock()
	if err != nil {
		return "", false, err
	}
	defer release()
	return p.groupOfLocked(pod)
}

func (p *Pool) groupOfLocked(pod string) (string, bool, error) {
	dir, g, ok, err := readIndex(p.root, p.ns, pod)
	if err != nil || !ok {
		return "", false, err
	}
	k := p.slotOf(g)
	if dir != filepath.Base(p.dir) || k < 0 {
		return "", false, fmt.Errorf("pool: pod %s is in %s's group %q, not this pool's", pod, dir, g)
	}
	// Its slot may have been emptied as a dead shim's since.
	if _, err := os.Stat(filepath.Join(p.slotDir(k), pod)); errors.Is(err, os.ErrNotExist) {
		_ = os.Remove(indexPath(p.root, p.ns, pod)) // stale: the slot let it go
		return "", false, nil
	}
	return g, true, nil
}

// readIndex reads where pod is: its pool's directory name and its group.
func readIndex(root, namespace, pod string) (dir, group string, ok bool, err error) {
	data, err := os.ReadFile(indexPath(root, namespace, pod))
	if errors.Is(err, os.ErrNotExist) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("pool: where is pod %s: %w", pod, err)
	}
	dir, group, found := strings.Cut(string(data), " ")
	if !found || checkName("pool", dir) != nil {
		return "", "", false, fmt.Errorf("pool: where is pod %s: %q: %w", pod, data, errMalformed)
	}
	return dir, group, true, nil
}

var errMalformed = errors.New("malformed pool index")

// Leave takes pod of namespace out of its slot, whatever its pool: the
// callers (ShutdownSandbox, the pause task's delete, `delete` after a
// shim's death) need not know the handler's options. Leaving twice, or a
// Pod never admitted, is no error.
func Leave(root, namespace, pod string) error {
	if err := checkName("pod id", pod); err != nil {
		return err
	}
	dir, _, ok, err := readIndex(root, namespace, pod)
	if err != nil || !ok {
		return err
	}
	p, err := OpenDir(filepath.Join(root, dir))
	if err != nil {
		return err
	}
	release, err := p.lock()
	if err != nil {
		return err
	}
	defer release()
	g, ok, err := p.groupOfLocked(pod)
	if err != nil || !ok {
		return err
	}
	return p.removeLocked(p.slotOf(g), pod)
}

func (p *Pool) removeLocked(k int, pod string) error {
	for _, f := range []string{filepath.Join(p.slotDir(k), pod), indexPath(p.root, p.ns, pod)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pool: pod %s leaves slot %d: %w", pod, k, err)
		}
	}
	return nil
}

// ExitIfEmpty decides for the shim of group whether it may exit: with the
// lock held, if its slot has no Pod, done runs (the server removes its
// socket there, so that a later start starts a new shim rather than
// returning an address about to close) and ExitIfEmpty reports true.
func (p *Pool) ExitIfEmpty(group string, done func() error) (bool, error) {
	k := p.slotOf(group)
	if k < 0 {
		return false, fmt.Errorf("pool: group %q is not this pool's", group)
	}
	release, err := p.lock()
	if err != nil {
		return false, err
	}
	defer release()
	pods, err := p.members(k)
	if err != nil {
		return false, fmt.Errorf("pool slot %d: %w", k, err)
	}
	if len(pods) > 0 {
		return false, nil
	}
	if err := done(); err != nil {
		return false, err
	}
	return true, nil
}

// checkName refuses a Pod id or namespace that is no plain file name
// (containerd's are [A-Za-z0-9_.-]; a path here would escape the pool's
// directory).
func checkName(what, name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%s %q: not a file name", what, name)
	}
	return nil
}

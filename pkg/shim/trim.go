package shim

import (
	"context"
	"runtime/debug"
	"time"
)

// trimAfter is how long the shim must be quiet before it gives memory back.
const trimAfter = time.Second

// memoryTrimmer returns freed heap to the kernel once the shim goes quiet.
// A shim spends nearly all its life idle after a burst of RPCs (create,
// start); Go's background scavenger would keep that burst's garbage
// resident for minutes, and a node runs one shim per pod. One GC when idle
// is cheap; it never runs on an RPC's path.
type memoryTrimmer struct {
	kick chan struct{}
}

func newMemoryTrimmer(ctx context.Context) *memoryTrimmer {
	t := &memoryTrimmer{kick: make(chan struct{}, 1)}
	go t.run(ctx)
	return t
}

// activity notes that the shim did work; never blocks.
func (t *memoryTrimmer) activity() {
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

func (t *memoryTrimmer) run(ctx context.Context) {
	timer := time.NewTimer(trimAfter)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.kick:
			timer.Reset(trimAfter)
		case <-timer.C:
			debug.FreeOSMemory()
		}
	}
}

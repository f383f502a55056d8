// Package task is containerd's Task API (v3, and v2 through the same
// methods) over the backends of pkg/runtime.
//
//   - Service (service.go) holds the tasks and answers the RPCs: it looks
//     the task up, hands the work to it, and publishes the events.
//   - container (container.go) is one task: it owns its init and execs, its
//     rootfs mount, its stdio and its backend, and runs their lifecycles.
//   - process (process.go) is an init or an exec with its state machine:
//     every state change goes through process.transition and the rules
//     table, which refuses an illegal move with FailedPrecondition naming
//     task, exec, state and operation.
//   - exitTracker (exits.go) matches the reaper's exits to processes and
//     orders them as containerd expects.
//
// # Locks
//
// Outermost first; a goroutine holding one never takes one above it:
//
//  1. process.op (per process): serialises lifecycle commands on one
//     process (start, delete; on the init also pause, resume, update,
//     checkpoint). The only lock held across a runtime command or an I/O
//     wait (stdio drain). Kill, State, Pids, Stats, Connect, Wait, CloseIO,
//     ResizePty and exit handling never take it.
//  2. Service.mu (shim-wide): the tasks map, the panic marks and the
//     shutdown flag. ShutdownIfIdle asks the sandbox service's Holds under
//     it (whose locks are leaves to this package and never call back), so
//     that the decision to exit and a new task or pod sandbox cannot
//     interleave.
//  3. container.mu (per task): the execs map.
//  4. exitTracker.mu (shim-wide): running pids, exec counts, subscriptions.
//  5. process.mu (per process): state, exit status, stdio handle. Held for
//     field access only; the one call made under it queues a TaskExit (the
//     event queue's own lock is below it), so that two reports of one exit
//     cannot both publish and nothing that waits for the exit overtakes
//     its event.
//
// Locks 2-5 are never held across a runtime command, an I/O wait, an event
// send or a call into another component. A pid is an atomic, read without
// any lock. The event queue, the OOM watcher and the metrics recorder have
// leaf locks of their own. OOMWatcher.CheckExit and Remove may wait for a
// TaskOOM being published (publishOOM takes Service.mu): they are called
// without locks 2-5.
package task

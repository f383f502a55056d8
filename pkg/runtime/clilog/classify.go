package clilog

// Why strings: the backends drive runc, crun and runsc as CLIs, and a CLI's
// failure is an exit status and a sentence, nothing typed. Matching those
// sentences is unavoidable (containerd's runc shim does it in
// process/utils.go checkKillError), but it must not spread: this file is the
// one place it is done, one function per runtime family, so that the same
// condition gets the same errdefs kind on every backend and a new runtime
// version is checked in one table test.
//
// The words matched here are the ones real runtimes printed, captured by
// internal/capture into testdata/ and checked by classify_test.go:
//   - runc 1.1.5 (Debian 12's runc 1.1.5+ds1-1+deb12u1), testdata/runc-1.1.5.jsonl
//   - crun 1.8.1 (Debian 12), testdata/crun-1.8.1.jsonl; it cannot create a
//     container on a cgroup v1 hybrid host, so only the cases without one
//   - runsc from gvisor.dev/gvisor v0.0.0-20260905035102-160fafc42237 (what
//     scripts/deps.sh builds), platform systrap, testdata/runsc-20260905.jsonl
//   - runsc 0.0~20221219.0 (Debian 12's package), platform ptrace,
//     testdata/runsc-20221219-debian.jsonl

import (
	"strings"

	"github.com/containerd/errdefs"
)

// Family is a group of runtime CLIs that word their failures alike.
type Family string

const (
	// Runc is runc and the CLIs that copy its interface (crun).
	Runc Family = "runc"
	// Runsc is gVisor's runsc.
	Runsc Family = "runsc"
)

// Classify returns the errdefs kind that a runtime CLI's failure message
// implies for operation op ("create", "start", "kill", "exec", "delete",
// "pause", "resume", "update", "ps", "events", "checkpoint", "restore",
// "wait", "state"), or nil when the message names no condition the
// backends promise a kind for; the caller then wraps the runtime's own
// message. msg is what the runtime logged (or printed) for the failure.
//
// The kinds, the same for a condition on every family:
//   - NotFound: the container does not exist; for kill, ps, events, state,
//     delete and wait also a container whose processes are gone (CRI treats
//     NotFound from Kill as "already stopped").
//   - AlreadyExists: create with an id that is taken.
//   - FailedPrecondition: the container is in the wrong state for op (pause
//     a stopped or paused one, resume a running one, exec in a stopped or
//     paused one, start a running one), or a pod's sandbox is gone.
//   - InvalidArgument: an unknown flag, a bad value, a config.json the
//     runtime rejects.
//   - NotImplemented: the runtime or the host does not support what was
//     asked.
//
// Only the message's first line is read: what follows is usage text, a
// panic's stack or a dump of the spec, whose words say nothing about the
// failure.
func Classify(family Family, op, msg string) error {
	m := strings.ToLower(firstLine(msg))
	if m == "" {
		return nil
	}
	if family == Runsc {
		return classifyRunsc(op, m)
	}
	return classifyRunc(op, m)
}

// classifyRunc classifies runc's and crun's words; m is lower case.
func classifyRunc(op, m string) error {
	switch {
	case usageError(m):
		return errdefs.ErrInvalidArgument
	case unsupported(m) || has(m, "is specified in config, but"): // runc: intelRdt on a host without RDT
		return errdefs.ErrNotImplemented
	case has(m, "executable file not found"): // create, exec
		return errdefs.ErrInvalidArgument
	}
	if op == "create" || op == "restore" {
		// The container being created cannot be what "does not exist":
		// at create, missing things are the config's.
		switch {
		case has(m, "already exists"):
			return errdefs.ErrAlreadyExists
		case has(m,
			"must not be empty", "must be an absolute path", // runc's spec validation
			"does not exist", // runc: namespace {"time" ""} does not exist
			"invalid rootfs",
			"unexpected eof", "invalid character", "cannot unmarshal", // config.json does not decode
			"error loading config.json", "invalid namespace type", // crun
		):
			return errdefs.ErrInvalidArgument
		case has(m, "error mounting") && has(m, "no such device"):
			// A filesystem type the kernel does not have.
			return errdefs.ErrInvalidArgument
		}
		return nil
	}
	switch {
	case has(m, "container does not exist") ||
		has(m, "/status`: no such file or directory") || // crun: error opening file `<root>/<id>/status`
		strings.HasPrefix(m, "cannot open directory") && has(m, "no such file or directory"): // crun delete
		return errdefs.ErrNotFound
	case goneMeansNotFound(op) && has(m, "not running", "process already finished", "no such process"):
		return errdefs.ErrNotFound
	case has(m,
		"not running", "not paused", "already running", "not stopped", // runc's libcontainer states
		"cannot start a container", "cannot exec in a", "cannot be checkpointed in",
	):
		return errdefs.ErrFailedPrecondition
	case has(m, "unknown signal", "invalid character", "unexpected end of json input", "cannot unmarshal"):
		return errdefs.ErrInvalidArgument
	}
	return nil
}

// classifyRunsc classifies runsc's words; m is lower case.
func classifyRunsc(op, m string) error {
	switch {
	case usageError(m) || has(m, "failed to parse flags", "unknown platform",
		"unknown flag", // a dev.gvisor.flag.<name> annotation runsc does not know
	):
		return errdefs.ErrInvalidArgument
	case unsupported(m) || strings.HasPrefix(m, "usage: runsc <flags> <subcommand>"):
		// runsc prints only its top-level usage for a subcommand it does
		// not have (Debian 12's 2022 runsc has no update).
		return errdefs.ErrNotImplemented
	case has(m, "error finding executable"): // start, exec
		return errdefs.ErrInvalidArgument
	}
	if op == "create" || op == "restore" {
		switch {
		case has(m, "already exists"):
			return errdefs.ErrAlreadyExists
		case has(m, "cannot load sandbox"):
			// A pod container whose sandbox is gone: nothing to join.
			return errdefs.ErrFailedPrecondition
		case has(m,
			"reading spec:", // FetchSpec's validation and decoding
			"failed to stat mount",
		):
			return errdefs.ErrInvalidArgument
		}
		return nil
	}
	switch {
	case has(m, "loading container", "loading sandbox") && has(m, "file does not exist"),
		has(m, "container does not exist"),
		has(m, `container "`) && has(m, `" not found`): // the sandbox does not know the container
		return errdefs.ErrNotFound
	case goneMeansNotFound(op) && has(m,
		"sandbox is not running", "connecting to control server", "connection refused", // the sandbox exited
		"no longer running", // wait: "sandbox no longer running and its exit status is unavailable"
		"in state stopped", "no such process",
	):
		return errdefs.ErrNotFound
	case has(m,
		"in state ",                // cannot <action> container "<id>" in state <state>
		"invalid state transition", // a panic of runsc pause on a created container
		"not started", "not stopped",
		"sandbox is not running", "connecting to control server", "connection refused", "no longer running",
	):
		return errdefs.ErrFailedPrecondition
	case has(m, "unknown signal", "invalid character", "unexpected end of json input", "cannot unmarshal"):
		return errdefs.ErrInvalidArgument
	}
	return nil
}

// goneMeansNotFound: for these ops a container whose processes are gone is
// as good as missing. Pause, exec and the like refuse it instead
// (FailedPrecondition).
func goneMeansNotFound(op string) bool {
	switch op {
	case "kill", "ps", "events", "state", "delete", "wait":
		return true
	}
	return false
}

// usageError: the CLI rejected its command line, before doing anything.
func usageError(m string) bool {
	return has(m,
		"flag provided but not defined", "invalid boolean value", "invalid value ", // Go's flag package (runc, runsc)
		"incorrect usage",                                  // runc's urfave/cli
		"unrecognized option", "doesn't allow an argument", // crun's getopt
	)
}

func unsupported(m string) bool {
	return has(m, "not supported", "not implemented", "unknown command") // crun: "unknown command events"
}

func has(m string, words ...string) bool {
	for _, w := range words {
		if strings.Contains(m, w) {
			return true
		}
	}
	return false
}

// firstLine is msg's first non-blank line.
func firstLine(msg string) string {
	for line := range strings.Lines(msg) {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return ""
}

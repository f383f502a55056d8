package runsc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"time"

	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/log"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/clilog"
	runcbackend "github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime/runc"
)

func (b *Backend) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.bin, append(append([]string(nil), b.global...), args...)...)
	cmd.Dir = b.bundle.Path()
	// A sandbox process that inherited a captured stdout or stderr would
	// keep the pipe open and the wait for its output would never end.
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// run runs one runsc command. With cio the command gets the container's
// stdio (the sandbox or sub-container inherits it); without, its output
// goes to out, and stderr is kept for the error message.
func (b *Backend) run(ctx context.Context, op string, cio *runtime.IO, out io.Writer, args ...string) error {
	cmd := b.command(ctx, args...)
	var stderr bytes.Buffer
	if cio != nil {
		runcbackend.CmdIO(cio).Set(cmd)
	} else {
		cmd.Stdout = out
		cmd.Stderr = &stderr
	}
	began := time.Now()
	err := b.wait(cmd, op, &stderr)
	if err != nil && ctx.Err() != nil && len(args) > 0 {
		return b.unanswered(op, args[len(args)-1], time.Since(began), ctx.Err())
	}
	return err
}

// maxStacks bounds the sandbox stacks one unanswered command logs.
const maxStacks = 256 << 10

// unanswered reports a runsc command killed because its request ended
// first. runsc waits on the sandbox and does not return while the sentry
// does not answer, so the request's deadline is what ends it: the error
// says so, and the sandbox's stacks go to the log for the operator (the
// wedged goroutine is in them), fetched with a bound of their own.
func (b *Backend) unanswered(op, id string, took time.Duration, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stacks bytes.Buffer
	cmd := b.command(ctx, "debug", "--stacks", id)
	cmd.Stdout = &stacks
	derr := b.wait(cmd, "debug", &bytes.Buffer{})
	text := stacks.String()
	if len(text) > maxStacks {
		text = text[:maxStacks] + "\n[cut]"
	}
	entry := log.L.WithFields(log.Fields{"op": op, "id": id, "after": took.Round(time.Millisecond).String()})
	if derr != nil {
		entry = entry.WithField("stacks_error", derr.Error())
	}
	entry.WithField("stacks", text).Warn("runsc did not return before the request ended and was killed; the sandbox's stacks follow")
	return fmt.Errorf("runsc %s %s: no answer from the sandbox after %s, killed: %w", op, id, took.Round(time.Millisecond), cause)
}

// wait runs a prepared command and classifies its failure: runsc's stderr
// says what went wrong, else (stderr was the container's) its log does.
func (b *Backend) wait(cmd *exec.Cmd, op string, stderr *bytes.Buffer) error {
	if cmd.Stderr == nil {
		cmd.Stderr = stderr
	}
	off := clilog.Size(b.log)
	ec, err := gorunc.Monitor.Start(cmd)
	if err != nil {
		return fmt.Errorf("runsc %s: %w", op, err)
	}
	status, err := gorunc.Monitor.Wait(cmd, ec)
	if err == nil && status == 0 {
		return nil
	}
	msg := strings.TrimSpace(stderr.String())
	if msg == "" {
		msg = clilog.LastError(b.log, off)
	}
	if msg == "" {
		msg = clilog.SpaceHint(b.bundle.Path())
	}
	return runtimeError(op, msg, status, err)
}

func runtimeError(op, msg string, status int, err error) error {
	if msg == "" {
		if err != nil {
			msg = err.Error()
		} else {
			msg = fmt.Sprintf("exit status %d", status)
		}
	}
	if kind := clilog.Classify(clilog.Runsc, op, msg); kind != nil {
		return fmt.Errorf("runsc %s failed: %s: %w", op, msg, kind)
	}
	return fmt.Errorf("runsc %s failed: %s", op, msg)
}

func combinedOutput(cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ec, err := gorunc.Monitor.Start(cmd)
	if err != nil {
		return nil, err
	}
	status, err := gorunc.Monitor.Wait(cmd, ec)
	if err == nil && status != 0 {
		err = errors.New("exit status " + strconv.Itoa(status))
	}
	return out.Bytes(), err
}

// Package procio connects a container process's stdio to what containerd
// asked for: fifos (ctr, CRI), binary:// logging drivers (nerdctl), file://
// paths, or a terminal. It follows containerd's runc shim (process/io.go),
// which it calls into for the binary driver and the console copy.
package procio

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

var bufPool = sync.Pool{
	New: func() any {
		// PIPE_BUF sized, as containerd's shim does.
		b := make([]byte, 4096)
		return &b
	},
}

// IO is the shim's side of one process's stdio.
type IO struct {
	id    string
	stdio stdio.Stdio

	rio    runc.IO      // handed to the runtime; nil with a terminal
	socket *runc.Socket // receives the pty master with a terminal
	copy   bool         // outputs are copied by the shim (fifo, file)

	wg      sync.WaitGroup // output copiers still running
	stdin   io.Closer      // our write end of the stdin fifo, closed by CloseIO
	console console.Console
	mu      sync.Mutex

	closeOnce sync.Once
}

// New prepares stdio before the runtime creates the process. ioUID and
// ioGID own the pipes (containerd's IoUid/IoGid runc options).
func New(ctx context.Context, id string, ioUID, ioGID int, s stdio.Stdio) (_ *IO, retErr error) {
	p := &IO{id: id, stdio: s}
	if s.Terminal {
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("create console socket: %w", err)
		}
		p.socket = sock
		return p, nil
	}
	if s.IsNull() {
		nio, err := runc.NewNullIO()
		if err != nil {
			return nil, fmt.Errorf("create null io: %w", err)
		}
		p.rio = nio
		return p, nil
	}
	u, err := url.Parse(s.Stdout)
	if err != nil {
		return nil, fmt.Errorf("parse stdout uri %q: %w", s.Stdout, err)
	}
	if u.Scheme == "" {
		u.Scheme = "fifo"
	}
	switch u.Scheme {
	case "fifo":
		p.copy = true
		p.rio, err = runc.NewPipeIO(ioUID, ioGID, conditional(s))
	case "binary", "binary-v2":
		p.rio, err = process.NewBinaryIO(ctx, id, u)
	case "file":
		if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
			return nil, fmt.Errorf("create log directory for %s: %w", u.Path, err)
		}
		// Not `f, err :=`: that err would shadow the one NewPipeIO sets
		// below, which the check after the switch must see.
		f, oerr := os.OpenFile(u.Path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if oerr != nil {
			return nil, fmt.Errorf("open log file %s: %w", u.Path, oerr)
		}
		_ = f.Close() // opened only to create it: nothing written, nothing to lose
		p.stdio.Stdout = u.Path
		p.stdio.Stderr = u.Path
		p.copy = true
		p.rio, err = runc.NewPipeIO(ioUID, ioGID, conditional(s))
	default:
		return nil, fmt.Errorf("unknown stdio scheme %q in %q", u.Scheme, s.Stdout)
	}
	if err != nil {
		return nil, fmt.Errorf("create %s io: %w", u.Scheme, err)
	}
	return p, nil
}

func conditional(s stdio.Stdio) runc.IOOpt {
	return func(o *runc.IOOption) {
		o.OpenStdin = s.Stdin != ""
		o.OpenStdout = s.Stdout != ""
		o.OpenStderr = s.Stderr != ""
	}
}

// RuntimeIO is the process's side of its stdio, to hand to the runtime;
// nil with a terminal.
func (p *IO) RuntimeIO() *runtime.IO {
	if p.rio == nil {
		return nil
	}
	// go-runc's IO types (pipes, /dev/null, containerd's binary logging
	// driver) hand their files to a command; take them the same way.
	var cmd exec.Cmd
	p.rio.Set(&cmd)
	file := func(v any) *os.File {
		f, _ := v.(*os.File)
		return f
	}
	return &runtime.IO{Stdin: file(cmd.Stdin), Stdout: file(cmd.Stdout), Stderr: file(cmd.Stderr)}
}

// Console is the socket the runtime sends the pty master to, nil without
// a terminal.
func (p *IO) Console() *runtime.Console {
	if p.socket == nil {
		return nil
	}
	return &runtime.Console{Path: p.socket.Path()}
}

// Start connects the process's stdio once the runtime has created it: it
// receives the pty master or starts copying pipes, and opens stdin so that
// CloseIO can close it later.
func (p *IO) Start(ctx context.Context, platform stdio.Platform) error {
	if p.stdio.Stdin != "" {
		sc, err := fifo.OpenFifo(context.Background(), p.stdio.Stdin, unix.O_WRONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open stdin fifo %s: %w", p.stdio.Stdin, err)
		}
		p.mu.Lock()
		p.stdin = sc
		p.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if p.socket != nil {
		master, err := p.socket.ReceiveMaster()
		if err != nil {
			return fmt.Errorf("receive console master: %w", err)
		}
		cons, err := platform.CopyConsole(ctx, master, p.id, p.stdio.Stdin, p.stdio.Stdout, p.stdio.Stderr, &p.wg)
		if err != nil {
			_ = master.Close() // best effort on the error path
			return fmt.Errorf("copy console: %w", err)
		}
		p.mu.Lock()
		p.console = cons
		p.mu.Unlock()
		return nil
	}
	if !p.copy {
		return nil
	}
	return copyPipes(ctx, p.rio, p.stdio.Stdin, p.stdio.Stdout, p.stdio.Stderr, &p.wg)
}

// CloseStdin closes the process's stdin (CloseIO).
func (p *IO) CloseStdin() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin == nil {
		return nil
	}
	err := p.stdin.Close()
	p.stdin = nil
	return err
}

// HasConsole reports whether the process has a terminal.
func (p *IO) HasConsole() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.console != nil
}

// Resize resizes the terminal.
func (p *IO) Resize(ws console.WinSize) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.console == nil {
		return nil
	}
	return p.console.Resize(ws)
}

// Exited is called when the process has exited: the console stops reading
// so the copy goroutines drain and finish.
func (p *IO) Exited(platform stdio.Platform) {
	p.mu.Lock()
	cons := p.console
	p.mu.Unlock()
	if cons != nil && platform != nil {
		if err := platform.ShutdownConsole(context.Background(), cons); err != nil {
			log.L.WithError(err).Debug("shutdown console")
		}
	}
}

// Wait waits, at most timeout, for the output copies to finish, so a
// process's last lines reach containerd before it is told the process is
// gone.
func (p *IO) Wait(timeout time.Duration) error {
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("stdio of %s not drained after %s", p.id, timeout)
	}
}

// Close releases everything: pipes, the console socket, stdin. Its error
// is of no use to callers: pipes report the write ends CloseAfterStart
// already closed, and a binary logging driver that had to be killed is
// logged by containerd's code.
func (p *IO) Close() error {
	_ = p.CloseStdin() // closing our write end of a fifo loses nothing
	if p.socket != nil {
		if err := p.socket.Close(); err != nil {
			log.L.WithError(err).Debug("close console socket")
		}
	}
	if p.rio != nil {
		return p.rio.Close()
	}
	return nil
}

// CloseAfterStart closes the shim's copies of the ends the process got,
// once it has started (or will never start), so the copies see EOF when
// the process closes its outputs. It may be called more than once.
func (p *IO) CloseAfterStart() {
	p.closeOnce.Do(func() {
		if c, ok := p.rio.(runc.StartCloser); ok {
			_ = c.CloseAfterStart() // closes only the shim's copies of the process's ends
		}
	})
}

func copyPipes(ctx context.Context, rio runc.IO, stdin, stdout, stderr string, wg *sync.WaitGroup) error {
	var sameFile *countingWriteCloser
	for _, o := range []struct {
		name string
		src  io.Reader
	}{{stdout, rio.Stdout()}, {stderr, rio.Stderr()}} {
		if o.name == "" || o.src == nil {
			continue
		}
		var (
			w io.WriteCloser
			r io.Closer
		)
		isFifo, err := fifo.IsFifo(o.name)
		if err != nil {
			return fmt.Errorf("stat %s: %w", o.name, err)
		}
		switch {
		case isFifo:
			if w, err = fifo.OpenFifo(ctx, o.name, syscall.O_WRONLY, 0); err != nil {
				return fmt.Errorf("open fifo %s for writing: %w", o.name, err)
			}
			// Hold a read end too, so a reader that goes away (containerd
			// restarting) does not make our writes fail with EPIPE.
			if r, err = fifo.OpenFifo(ctx, o.name, syscall.O_RDONLY, 0); err != nil {
				_ = w.Close() // best effort on the error path
				return fmt.Errorf("open fifo %s for reading: %w", o.name, err)
			}
		case sameFile != nil:
			sameFile.count.Add(1)
			w = sameFile
		default:
			f, err := os.OpenFile(o.name, syscall.O_WRONLY|syscall.O_APPEND, 0)
			if err != nil {
				return fmt.Errorf("open %s: %w", o.name, err)
			}
			w = f
			if stdout == stderr {
				sameFile = &countingWriteCloser{WriteCloser: f}
				sameFile.count.Add(1)
				w = sameFile
			}
		}
		wg.Add(1)
		go func(src io.Reader, w io.WriteCloser, r io.Closer) {
			defer wg.Done()
			b := bufPool.Get().(*[]byte)
			defer bufPool.Put(b)
			if _, err := io.CopyBuffer(w, src, *b); err != nil {
				log.G(ctx).WithError(err).Debug("copy process output")
			}
			if err := w.Close(); err != nil {
				log.G(ctx).WithError(err).Debug("close process output")
			}
			if r != nil {
				_ = r.Close() // a read end held only to keep the fifo open
			}
		}(o.src, w, r)
	}
	if stdin == "" {
		return nil
	}
	f, err := fifo.OpenFifo(context.Background(), stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open stdin fifo %s: %w", stdin, err)
	}
	go func() {
		b := bufPool.Get().(*[]byte)
		defer bufPool.Put(b)
		if _, err := io.CopyBuffer(rio.Stdin(), f, *b); err != nil {
			log.G(ctx).WithError(err).Debug("copy process input")
		}
		// Closing the process's stdin is how it sees EOF; neither close
		// has anything to flush.
		_ = rio.Stdin().Close()
		_ = f.Close()
	}()
	return nil
}

// countingWriteCloser closes the file when its last user closes it: stdout
// and stderr may be the same file.
type countingWriteCloser struct {
	io.WriteCloser
	count atomic.Int64
}

func (c *countingWriteCloser) Close() error {
	if c.count.Add(-1) > 0 {
		return nil
	}
	return c.WriteCloser.Close()
}

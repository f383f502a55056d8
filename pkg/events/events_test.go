package events

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// hangGuard only turns a hang into a failure; nothing here is timed.
const hangGuard = 30 * time.Second

// Errors as containerd's side produces them (see TTRPCSender and
// ttrpc.Client.Call): a dial that finds no socket or no listener, a
// connection that closes under a call, our own send timeout, or a status
// containerd answered with (ttrpc's client returns status.ErrorProto of it).
var (
	errNoSocket     = &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}
	errRefused      = &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	unreachableErrs = []error{
		errNoSocket,
		errRefused,
		ttrpc.ErrClosed,
		context.DeadlineExceeded,
		status.Error(codes.Unavailable, "ttrpc: server shutting down"),
	}
)

// fakeSender stands for containerd's events service: answer decides, per
// attempt, what containerd says to an event (nil: accepted).
type fakeSender struct {
	answer func(seq uint32, attempt int) error

	mu        sync.Mutex
	attempts  map[uint32]int
	delivered []uint32
	arrived   chan uint32 // each accepted event's sequence number
}

func newFakeSender(answer func(seq uint32, attempt int) error) *fakeSender {
	return &fakeSender{answer: answer, attempts: map[uint32]int{}, arrived: make(chan uint32, 1024)}
}

func (f *fakeSender) Send(ctx context.Context, env *types.Envelope) error {
	seq := sequence(env)
	f.mu.Lock()
	f.attempts[seq]++
	n := f.attempts[seq]
	f.mu.Unlock()
	if f.answer != nil {
		if err := f.answer(seq, n); err != nil {
			return err
		}
	}
	f.mu.Lock()
	f.delivered = append(f.delivered, seq)
	f.mu.Unlock()
	f.arrived <- seq
	return nil
}

func (f *fakeSender) attemptsOf(seq uint32) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[seq]
}

func (f *fakeSender) deliveredList() []uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint32(nil), f.delivered...)
}

// waitDelivered waits until the event with sequence number seq arrives.
func (f *fakeSender) waitDelivered(t *testing.T, seq uint32) {
	t.Helper()
	guard := time.After(hangGuard)
	for {
		select {
		case got := <-f.arrived:
			if got == seq {
				return
			}
		case <-guard:
			t.Fatalf("event %d never delivered; delivered %v", seq, f.deliveredList())
		}
	}
}

// sequence reads back the number publish put into the event.
func sequence(env *types.Envelope) uint32 {
	v, err := typeurl.UnmarshalAny(env.Event)
	if err != nil {
		panic(err)
	}
	return v.(*eventstypes.TaskExit).Pid
}

func publish(q *Queue, from, to uint32) {
	for i := from; i <= to; i++ {
		q.Publish(&eventstypes.TaskExit{ContainerID: fmt.Sprintf("c%d", i), ID: fmt.Sprintf("c%d", i), Pid: i})
	}
}

func seq(from, to uint32) []uint32 {
	var s []uint32
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func wantDelivered(t *testing.T, got, want []uint32) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
}

func TestEventsDeliveredInOrder(t *testing.T) {
	f := newFakeSender(nil)
	q := NewQueue("default", f, nil)
	const n = 500
	publish(q, 1, n)
	f.waitDelivered(t, n)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	wantDelivered(t, f.deliveredList(), seq(1, n))
}

// While containerd cannot be reached (restarting, socket gone), the event
// at the head is retried in place: once it is back, every event arrives
// exactly once, in order.
func TestEventsRetriedInPlaceWhileUnreachable(t *testing.T) {
	for _, err := range unreachableErrs {
		t.Run(fmt.Sprintf("%T %v", err, err), func(t *testing.T) {
			const fails = 4
			f := newFakeSender(func(seq uint32, attempt int) error {
				if seq == 2 && attempt <= fails {
					return err
				}
				return nil
			})
			q := NewQueue("default", f, nil)
			publish(q, 1, 5)
			f.waitDelivered(t, 5)
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			wantDelivered(t, f.deliveredList(), seq(1, 5))
			if got := f.attemptsOf(2); got != fails+1 {
				t.Errorf("event 2 sent %d times, want %d", got, fails+1)
			}
		})
	}
}

// An event containerd refuses (it answered, and will answer the same
// again) is dropped and the queue moves on: the exits behind it must not
// wait for ever.
func TestRefusedEventDroppedLaterEventsFlow(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		// tries the refused event may get: a definite refusal is not
		// retried; Unknown gets a few (see ambiguousTries).
		tries int
	}{
		{"invalid argument", errgrpc.ToGRPC(fmt.Errorf("envelope topic %q: %w", "/x", errdefs.ErrInvalidArgument)), 1},
		{"not found", errgrpc.ToGRPC(fmt.Errorf("namespace: %w", errdefs.ErrNotFound)), 1},
		{"unknown with a payload error", status.Error(codes.Unknown, "proto: cannot parse invalid wire-format data"), ambiguousTries},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeSender(func(seq uint32, attempt int) error {
				if seq == 2 {
					return c.err
				}
				return nil
			})
			rec := metrics.New(metrics.Options{})
			q := NewQueue("default", f, rec)
			publish(q, 1, 4)
			f.waitDelivered(t, 4)
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			wantDelivered(t, f.deliveredList(), []uint32{1, 3, 4})
			if got := f.attemptsOf(2); got != c.tries {
				t.Errorf("refused event sent %d times, want %d", got, c.tries)
			}
			wantDropped(t, rec, map[string]float64{"/tasks/exit refused": 1})
		})
	}
}

// Close delivers everything queued before it returns, in order, even
// while containerd is briefly unreachable.
func TestCloseFlushesQueuedEvents(t *testing.T) {
	retried, release := make(chan struct{}), make(chan struct{})
	f := newFakeSender(func(seq uint32, attempt int) error {
		if seq != 1 {
			return nil
		}
		if attempt == 2 {
			close(retried)
		}
		select {
		case <-release:
			return nil
		default:
			return ttrpc.ErrClosed
		}
	})
	q := NewQueue("default", f, nil)
	publish(q, 1, 20)
	// The head has failed twice: everything is still queued when Close
	// starts.
	<-retried
	closed := make(chan error, 1)
	go func() { closed <- q.Close() }()
	close(release)
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(hangGuard):
		t.Fatal("Close never returned")
	}
	wantDelivered(t, f.deliveredList(), seq(1, 20))
	// After Close, events are refused (logged), not queued.
	publish(q, 21, 21)
	if got := f.attemptsOf(21); got != 0 {
		t.Errorf("event published after Close sent %d times", got)
	}
}

// eventsServer is containerd's events service as far as the queue can
// tell: a ttrpc server on a unix socket whose Forward answers as
// containerd's does (errgrpc.ToGRPC of an errdefs error, or a plain error,
// which ttrpc sends as Unknown).
type eventsServer struct {
	answer func(seq uint32) error
	got    chan uint32
}

func (s *eventsServer) Forward(ctx context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	seq := sequence(r.Envelope)
	if err := s.answer(seq); err != nil {
		return nil, err
	}
	s.got <- seq
	return &emptypb.Empty{}, nil
}

func serveEvents(t *testing.T, path string, s *eventsServer) *ttrpc.Server {
	t.Helper()
	server, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	eventsapi.RegisterTTRPCEventsService(server, s)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(context.Background(), l) }()
	t.Cleanup(func() { _ = server.Close() })
	return server
}

// Through the real sender and a real ttrpc server: the socket is missing
// at first (containerd not up yet), events wait; once it serves, a
// refused event is dropped and the rest arrive in order; when the server
// goes away and comes back, the queue reconnects.
func TestTTRPCSenderAgainstEventsService(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ttrpc.sock")
	s := &eventsServer{got: make(chan uint32, 100), answer: func(seq uint32) error {
		switch seq {
		case 2:
			return errgrpc.ToGRPC(fmt.Errorf("validate topic: %w", errdefs.ErrInvalidArgument))
		case 3:
			return errors.New("event payload rejected") // arrives as Unknown
		}
		return nil
	}}
	rec := metrics.New(metrics.Options{})
	sender := NewTTRPCSender("unix://" + path)
	defer sender.Close()
	q := NewQueue("default", sender, rec)
	// Delivery is at least once: an event the server took but whose answer
	// was lost in the restart below is sent again. Wait for the answers, so
	// that the restart comes after 5 is acknowledged.
	acked := make(chan struct{}, 100)
	q.OnSent = func(_ string, err error) {
		if err == nil {
			acked <- struct{}{}
		}
	}
	publish(q, 1, 5)

	server := serveEvents(t, path, s)
	want := []uint32{1, 4, 5}
	for _, w := range want {
		select {
		case got := <-s.got:
			if got != w {
				t.Fatalf("got event %d, want %d", got, w)
			}
		case <-time.After(hangGuard):
			t.Fatalf("event %d never arrived", w)
		}
		select {
		case <-acked:
		case <-time.After(hangGuard):
			t.Fatalf("event %d never acknowledged", w)
		}
	}

	// containerd restarts: the cached connection breaks; the next event
	// goes through a new one.
	_ = server.Close()
	_ = os.Remove(path)
	publish(q, 6, 6)
	serveEvents(t, path, s)
	select {
	case got := <-s.got:
		if got != 6 {
			t.Fatalf("got event %d, want 6", got)
		}
	case <-time.After(hangGuard):
		t.Fatal("event 6 never arrived after the server came back")
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	wantDropped(t, rec, map[string]float64{"/tasks/exit refused": 2})
}

// wantDropped compares events_dropped_total by "topic reason".
func wantDropped(t *testing.T, rec *metrics.Recorder, want map[string]float64) {
	t.Helper()
	fams, err := rec.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != metrics.Prefix+"events_dropped_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			got[l["topic"]+" "+l["reason"]] = m.GetCounter().GetValue()
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events_dropped_total %v, want %v", got, want)
	}
}

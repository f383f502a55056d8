// Package events delivers a shim's task events to containerd: one ordered
// queue, retried in place while containerd is unreachable, flushed before
// the shim exits, so that no event is lost or reordered; an event
// containerd refuses is dropped and counted rather than holding back the
// events behind it.
package events

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// Sender delivers one event envelope to containerd.
type Sender interface {
	Send(ctx context.Context, env *types.Envelope) error
}

// Queue forwards task events to containerd strictly in the order they
// were queued. One goroutine sends; while containerd cannot be reached, the
// event is retried in place, never requeued behind later events; an event
// containerd refuses is dropped (logged and counted) so that the events
// behind it flow. Close flushes what is queued before the shim exits.
// containerd's runc shim requeues failures at the back and stops forwarding
// at shutdown, which is how it loses and reorders events in quick
// create/exit/delete cycles.
type Queue struct {
	namespace string
	sender    Sender
	metrics   *metrics.Recorder

	mu      sync.Mutex
	cond    *sync.Cond
	pending []*types.Envelope // guarded by mu
	closed  bool              // guarded by mu
	flushBy time.Time         // guarded by mu; set by Close
	done    chan struct{}

	// OnSent, when set before the first Publish, is called after each
	// delivery attempt (tests).
	OnSent func(topic string, err error)
}

const (
	sendTimeout = 5 * time.Second
	// ambiguousTries bounds the tries of an event that got an ambiguous
	// answer (see classify). Unknown is what containerd sends for a plain
	// error of its handler: a payload it cannot take fails the same way
	// every time, and every exit queued behind it waits; when it means that
	// containerd is stopping, its connection closes next and the event is
	// lost to that containerd anyway (the next one learns task states from
	// State and Wait). A few quick tries cover a blip; then the queue moves
	// on.
	ambiguousTries = 3
	maxBackoff     = time.Second
	flushDeadline  = 10 * time.Second
)

// NewQueue starts a queue sending through s; Close stops it. rec counts
// the events dropped; nil counts nothing.
func NewQueue(namespace string, s Sender, rec *metrics.Recorder) *Queue {
	q := &Queue{namespace: namespace, sender: s, metrics: rec, done: make(chan struct{})}
	q.cond = sync.NewCond(&q.mu)
	go q.run()
	return q
}

// Publish queues an event. It never blocks on containerd.
func (q *Queue) Publish(event any) {
	topic := runtime.GetTopic(event)
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		log.L.WithError(err).WithField("topic", topic).Error("marshal event")
		return
	}
	env := &types.Envelope{
		Timestamp: timestamppb.Now(),
		Namespace: q.namespace,
		Topic:     topic,
		Event:     a,
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		log.L.WithField("topic", topic).Error("event published after shutdown; dropped")
		return
	}
	q.pending = append(q.pending, env)
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *Queue) run() {
	defer close(q.done)
	for {
		q.mu.Lock()
		for len(q.pending) == 0 && !q.closed {
			q.cond.Wait()
		}
		if len(q.pending) == 0 && q.closed {
			q.mu.Unlock()
			return
		}
		env := q.pending[0]
		q.mu.Unlock()

		q.deliver(env)

		q.mu.Lock()
		q.pending[0] = nil
		q.pending = q.pending[1:]
		q.mu.Unlock()
	}
}

func (q *Queue) deliver(env *types.Envelope) {
	backoff := 10 * time.Millisecond
	for tries := 1; ; tries++ {
		ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
		err := q.sender.Send(ctx, env)
		cancel()
		if q.OnSent != nil {
			q.OnSent(env.Topic, err)
		}
		if err == nil {
			return
		}
		switch classify(err) {
		case refused:
			q.drop(env, err, metrics.EventRefused)
			return
		case ambiguous:
			if tries >= ambiguousTries {
				q.drop(env, err, metrics.EventRefused)
				return
			}
		}
		q.mu.Lock()
		expired := q.closed && time.Now().After(q.flushBy)
		q.mu.Unlock()
		if expired {
			q.drop(env, err, metrics.EventUnreachable)
			return
		}
		log.L.WithError(err).WithField("topic", env.Topic).Warn("forward event to containerd; retrying")
		time.Sleep(backoff)
		backoff = min(2*backoff, maxBackoff)
	}
}

// drop gives up on env: logged with its topic and container, and counted.
func (q *Queue) drop(env *types.Envelope, err error, reason metrics.EventDropReason) {
	l := log.L.WithError(err).WithFields(log.Fields{"topic": env.Topic, "reason": reason})
	if v, uerr := typeurl.UnmarshalAny(env.Event); uerr == nil {
		if e, ok := v.(interface{ GetContainerID() string }); ok {
			l = l.WithField("id", e.GetContainerID())
		}
	}
	if reason == metrics.EventUnreachable {
		l.Error("event dropped: containerd still unreachable as the shim exits")
	} else {
		l.Warn("event dropped")
	}
	q.metrics.EventDropped(env.Topic, reason)
}

// verdict is what a failed send tells about containerd.
type verdict uint8

const (
	// unreachable: containerd did not answer (socket missing, connection
	// refused or closed, no answer in time). It will take the event once
	// it is back, so the event is retried in place however long that takes.
	unreachable verdict = iota
	// refused: containerd answered with an error; it would answer the
	// same again.
	refused
	// ambiguous: an answer that may be transient (Unknown: a plain error
	// of containerd's handler, such as its exchange's "sink closed" while
	// it stops), or an error the sender does not know.
	ambiguous
)

// classify sorts a send error by what ttrpc returns: a status (even
// wrapped, as ttrpc's OversizedMessageErr) is containerd's answer, or the
// client's own refusal to send; without one the request got no answer: the
// dial's *net.OpError (ENOENT, ECONNREFUSED, EAGAIN), ttrpc.ErrClosed for a
// connection that closed under the call, our send timeout.
func classify(err error) verdict {
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			return unreachable
		case codes.Unknown:
			return ambiguous
		}
		return refused
	}
	var opErr *net.OpError
	switch {
	case errors.As(err, &opErr),
		errors.Is(err, ttrpc.ErrClosed), errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled),
		errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return unreachable
	}
	return ambiguous
}

// Close stops accepting events and waits, at most flushDeadline, until every
// queued event has been delivered.
func (q *Queue) Close() error {
	q.mu.Lock()
	q.closed = true
	q.flushBy = time.Now().Add(flushDeadline)
	q.mu.Unlock()
	q.cond.Broadcast()
	select {
	case <-q.done:
		return nil
	case <-time.After(flushDeadline + sendTimeout):
		return errors.New("timed out flushing events to containerd")
	}
}

// TTRPCSender forwards events over containerd's ttrpc address, reconnecting
// when the connection drops (containerd restarts).
type TTRPCSender struct {
	address string

	mu     sync.Mutex
	client *ttrpc.Client
}

// NewTTRPCSender returns a sender to containerd's ttrpc address
// ($TTRPC_ADDRESS).
func NewTTRPCSender(address string) *TTRPCSender {
	return &TTRPCSender{address: address}
}

// Send implements Sender: it forwards env to containerd, dialling on first
// use; a closed connection is dropped so that the next Send dials again.
func (s *TTRPCSender) Send(ctx context.Context, env *types.Envelope) error {
	c, err := s.connect(ctx)
	if err != nil {
		return err
	}
	_, err = eventsapi.NewTTRPCEventsClient(c).Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
	if err != nil && (errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, net.ErrClosed)) {
		s.reset(c)
	}
	return err
}

func (s *TTRPCSender) connect(ctx context.Context) (*ttrpc.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil {
		return s.client, nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", strings.TrimPrefix(s.address, "unix://"))
	if err != nil {
		return nil, err
	}
	s.client = ttrpc.NewClient(conn)
	return s.client, nil
}

// reset drops the cached client if it is c (nil: whatever is cached).
func (s *TTRPCSender) reset(c *ttrpc.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil && (c == nil || s.client == c) {
		_ = s.client.Close() // its connection failed already, or we are done with it
		s.client = nil
	}
}

// Close closes the connection, if any. A later Send dials again.
func (s *TTRPCSender) Close() error {
	s.reset(nil)
	return nil
}

// Package events delivers a shim's task events to containerd: one ordered
// queue, retried in place, flushed before the shim exits, so that no event
// is lost or reordered.
package events

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
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
)

// Sender delivers one event envelope to containerd.
type Sender interface {
	Send(ctx context.Context, env *types.Envelope) error
}

// Queue forwards task events to containerd strictly in the order they
// were queued. One goroutine sends; a failed send is retried in place, never
// requeued behind later events, and Close flushes what is queued before the
// shim exits. containerd's runc shim requeues failures at the back and stops
// forwarding at shutdown, which is how it loses and reorders events in quick
// create/exit/delete cycles.
type Queue struct {
	namespace string
	sender    Sender

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
	// rejectedTries bounds retries of an event containerd answered with an
	// error; connection failures (containerd restarting) are retried until
	// it is back.
	rejectedTries = 3
	maxBackoff    = time.Second
	flushDeadline = 10 * time.Second
)

// NewQueue starts a queue sending through s; Close stops it.
func NewQueue(namespace string, s Sender) *Queue {
	q := &Queue{namespace: namespace, sender: s, done: make(chan struct{})}
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
	rejected := 0
	for {
		ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
		err := q.sender.Send(ctx, env)
		cancel()
		if q.OnSent != nil {
			q.OnSent(env.Topic, err)
		}
		if err == nil {
			return
		}
		if rejectedByServer(err) {
			rejected++
		}
		q.mu.Lock()
		expired := q.closed && time.Now().After(q.flushBy)
		q.mu.Unlock()
		if rejected >= rejectedTries || expired {
			log.L.WithError(err).WithField("topic", env.Topic).Error("event dropped")
			return
		}
		log.L.WithError(err).WithField("topic", env.Topic).Warn("forward event to containerd; retrying")
		time.Sleep(backoff)
		backoff = min(2*backoff, maxBackoff)
	}
}

// rejectedByServer tells an answer from containerd apart from a failure to
// reach it.
func rejectedByServer(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown:
		return false
	}
	return true
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

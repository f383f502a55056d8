package harness

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/typeurl/v2"
)

// Task event topics, as published by containerd and shims.
const (
	TopicTaskCreate      = "/tasks/create"
	TopicTaskStart       = "/tasks/start"
	TopicTaskExit        = "/tasks/exit"
	TopicTaskDelete      = "/tasks/delete"
	TopicTaskOOM         = "/tasks/oom"
	TopicTaskExecAdded   = "/tasks/exec-added"
	TopicTaskExecStarted = "/tasks/exec-started"
	TopicTaskPaused      = "/tasks/paused"
	TopicTaskResumed     = "/tasks/resumed"
	TopicTaskCheckpoint  = "/tasks/checkpointed"
)

// syncTopic carries the recorder's own probe events (see NewRecorder).
const syncTopic = "/harness/sync"

// Event is one recorded task event.
type Event struct {
	Topic       string
	Namespace   string
	Timestamp   time.Time
	ContainerID string // from the payload; "" if it has none
	// Payload is the decoded event, e.g. *eventtypes.TaskExit from
	// github.com/containerd/containerd/api/events, or the raw typeurl.Any if
	// it could not be decoded.
	Payload any
}

// Recorder collects the /tasks/* events of one namespace, in arrival order.
// It resubscribes when the stream breaks (e.g. across Daemon.Restart); events
// published while it is not subscribed are lost.
type Recorder struct {
	client    *client.Client
	namespace string
	cancel    context.CancelFunc
	done      chan struct{}

	mu      sync.Mutex
	events  []Event
	changed chan struct{} // closed and replaced on every new event
	synced  map[string]chan struct{}
}

// Record starts a Recorder for the test (see NewRecorder) and stops it at the
// end of the test. It fails the test if the subscription cannot be set up.
func Record(t testing.TB, c *client.Client, namespace string) *Recorder {
	t.Helper()
	r, err := NewRecorder(context.Background(), c, namespace)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// NewRecorder subscribes to the task events of namespace. It returns once the
// subscription is live: the server registers a subscriber asynchronously, so
// it publishes probe events on syncTopic until one comes back. Call Close to stop.
func NewRecorder(ctx context.Context, c *client.Client, namespace string) (*Recorder, error) {
	ctx, cancel := context.WithCancel(ctx)
	r := &Recorder{
		client:    c,
		namespace: namespace,
		cancel:    cancel,
		done:      make(chan struct{}),
		changed:   make(chan struct{}),
		synced:    map[string]chan struct{}{},
	}
	go r.run(ctx)
	if err := r.sync(ctx, 10*time.Second); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// sync publishes a uniquely tagged probe every 100ms until the recorder sees it.
func (r *Recorder) sync(ctx context.Context, timeout time.Duration) error {
	token := "sync-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	seen := make(chan struct{})
	r.mu.Lock()
	r.synced[token] = seen
	r.mu.Unlock()
	pctx := namespaces.WithNamespace(ctx, r.namespace)
	deadline := time.After(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		// The payload type does not matter; TaskCreate is registered with typeurl.
		err := r.client.EventService().Publish(pctx, syncTopic, &eventtypes.TaskCreate{ContainerID: token})
		select {
		case <-seen:
			return nil
		case <-deadline:
			if err != nil {
				return fmt.Errorf("event subscription in namespace %q not live after %s (last publish error: %w)", r.namespace, timeout, err)
			}
			return fmt.Errorf("event subscription in namespace %q not live after %s", r.namespace, timeout)
		case <-tick.C:
		}
	}
}

func (r *Recorder) run(ctx context.Context) {
	defer close(r.done)
	filters := []string{
		fmt.Sprintf(`namespace==%s,topic~="^/tasks/"`, r.namespace),
		fmt.Sprintf(`namespace==%s,topic==%q`, r.namespace, syncTopic),
	}
	for {
		ch, errs := r.client.Subscribe(ctx, filters...)
		r.consume(ch, errs)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond): // daemon restarting: retry
		}
	}
}

// consume reads one subscription until it ends.
func (r *Recorder) consume(ch <-chan *events.Envelope, errs <-chan error) {
	for {
		select {
		case err := <-errs:
			// nil on cancel, an error when the stream broke (a daemon
			// restart): run subscribes again either way.
			_ = err
			return
		case env := <-ch:
			r.add(env)
		}
	}
}

func (r *Recorder) add(env *events.Envelope) {
	ev := Event{Topic: env.Topic, Namespace: env.Namespace, Timestamp: env.Timestamp, Payload: env.Event}
	if v, err := typeurl.UnmarshalAny(env.Event); err == nil {
		ev.Payload = v
		if c, ok := v.(interface{ GetContainerID() string }); ok {
			ev.ContainerID = c.GetContainerID()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if env.Topic == syncTopic {
		if seen, ok := r.synced[ev.ContainerID]; ok {
			close(seen)
			delete(r.synced, ev.ContainerID)
		}
		return
	}
	r.events = append(r.events, ev)
	close(r.changed)
	r.changed = make(chan struct{})
}

// Close stops the recorder. Recorded events stay readable.
func (r *Recorder) Close() {
	r.cancel()
	<-r.done
}

// Events returns a copy of all recorded events.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// ForContainer returns the recorded events of one container id, in order.
func (r *Recorder) ForContainer(id string) []Event {
	var out []Event
	for _, e := range r.Events() {
		if e.ContainerID == id {
			out = append(out, e)
		}
	}
	return out
}

// Topics returns the topics of ForContainer(id), e.g.
// ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"].
func (r *Recorder) Topics(id string) []string {
	var out []string
	for _, e := range r.ForContainer(id) {
		out = append(out, e.Topic)
	}
	return out
}

// WaitFor returns the first recorded event (already recorded or arriving
// within timeout) for which pred is true.
func (r *Recorder) WaitFor(pred func(Event) bool, timeout time.Duration) (Event, error) {
	deadline := time.After(timeout)
	checked := 0
	for {
		r.mu.Lock()
		evs, changed := r.events[checked:], r.changed
		r.mu.Unlock()
		for _, e := range evs {
			if pred(e) {
				return e, nil
			}
		}
		checked += len(evs)
		select {
		case <-changed:
		case <-deadline:
			return Event{}, fmt.Errorf("no matching event within %s (recorded: %s)", timeout, r.summary())
		}
	}
}

// Match is a WaitFor predicate: the event has this topic and container id
// (an empty containerID matches any).
func Match(topic, containerID string) func(Event) bool {
	return func(e Event) bool {
		return e.Topic == topic && (containerID == "" || e.ContainerID == containerID)
	}
}

func (r *Recorder) summary() string {
	evs := r.Events()
	s := fmt.Sprintf("%d events", len(evs))
	for _, e := range evs {
		s += fmt.Sprintf("; %s %s", e.Topic, e.ContainerID)
	}
	return s
}

package main

import (
	"fmt"
	"time"

	"github.com/containerd/containerd/v2/client"
)

// underLoad times lifecycles with N other tasks running per runtime.
func (b *bench) underLoad() {
	for _, r := range b.rts {
		n := *flagBackground
		if r.gvisor {
			n = *flagGVisorBg
		}
		cs, ts := b.start(r, n, "bg-"+r.name, "")
		var t []time.Duration
		for i := 0; i < *flagSeq; i++ {
			p, err := b.lifecycle(r, b.id("load-"+r.name))
			if err != nil {
				fatal(err)
			}
			t = append(t, p.create+p.start+p.exit+p.delete)
		}
		b.record("lifecycle p99 with N others running (ms)", r.name, fmt.Sprintf("%s (N=%d)", ms(pct(t, 99)), n))
		b.stopAll(cs, ts)
	}
}

func (b *bench) restart() {
	for _, r := range b.rts {
		n := *flagRestart
		if r.gvisor {
			n = *flagGVisorBg
		}
		cs, ts := b.start(r, n, "rs-"+r.name, "")
		if err := b.d.Stop(); err != nil {
			fatal(err)
		}
		t0 := time.Now()
		if err := b.d.Restart(); err != nil {
			fatal(err)
		}
		b.c = b.d.Client()
		// Every task reachable through its shim again.
		for _, c := range cs {
			for {
				task, err := c.Task(b.ctx, nil)
				if err == nil {
					if st, err := task.Status(b.ctx); err == nil && st.Status == client.Running {
						break
					}
				}
				if time.Since(t0) > 2*time.Minute {
					fatal(fmt.Errorf("%s: task %s not back after restart", r.name, c.ID()))
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		b.record("containerd restart: all N tasks reconnected (s)", r.name, fmt.Sprintf("%.2f (N=%d)", time.Since(t0).Seconds(), n))
		var lts []client.Task
		for _, c := range cs {
			task, _ := c.Task(b.ctx, nil)
			lts = append(lts, task)
		}
		_ = ts
		b.stopAll(cs, lts)
	}
}

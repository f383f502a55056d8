package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// taskCollector turns the recorder's task map into the two gauges at scrape
// time, so the task path only ever touches the map. Its descriptions are
// built with the recorder, not at package init: a binary that links this
// package but records nothing (the aggregator) pays nothing for them.
type taskCollector struct {
	r                        *Recorder
	tasksDesc, taskStateDesc *prometheus.Desc
}

func newTaskCollector(r *Recorder) taskCollector {
	return taskCollector{
		r: r,
		tasksDesc: prometheus.NewDesc(namespace+"_tasks",
			"Tasks in the shim, by state.",
			[]string{labelBackend, labelHandler, labelState}, nil),
		// The identity labels match cAdvisor's (namespace, pod, container
		// are the Kubernetes ones) so that the series joins with kubelet
		// and kube-state-metrics series without relabelling.
		taskStateDesc: prometheus.NewDesc(namespace+"_task_state",
			"One series per task, value 1, labelled with the task's identity and current state; gone once the task is deleted.",
			[]string{"containerd_namespace", "task_id", "namespace", "pod", "container", labelBackend, labelHandler, labelState}, nil),
	}
}

func (c taskCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.tasksDesc
	ch <- c.taskStateDesc
}

func (c taskCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	// Copy under the lock, build metrics outside it: the task path waits
	// for a copy of at most a few hundred small structs.
	r.tasksMu.Lock()
	entries := make([]taskEntry, 0, len(r.tasks))
	for _, e := range r.tasks {
		entries = append(entries, *e)
	}
	r.tasksMu.Unlock()

	// Every label set ever used is exported, with zeros, so that a state
	// going to 0 stays visible.
	known := r.sets.m.load()
	counts := make(map[Labels]*[numStates]float64, len(known))
	for l := range known {
		counts[l] = new([numStates]float64)
	}
	for _, e := range entries {
		l := e.l
		if _, ok := known[l]; !ok {
			l = Labels{overflow, overflow} // over the cap: counted with the overflow set
		}
		cs := counts[l]
		if cs == nil {
			cs = new([numStates]float64)
			counts[l] = cs
		}
		cs[e.state%numStates]++

		m, err := prometheus.NewConstMetric(c.taskStateDesc, prometheus.GaugeValue, 1,
			clean(e.t.Namespace), clean(e.t.ID), clean(e.t.PodNamespace), clean(e.t.Pod), clean(e.t.Container),
			clean(e.l.Backend), clean(e.l.Handler), e.state.String())
		if err == nil {
			ch <- m
		}
	}
	for l, cs := range counts {
		for s := range numStates {
			if m, err := prometheus.NewConstMetric(c.tasksDesc, prometheus.GaugeValue, cs[s], l.Backend, l.Handler, s.String()); err == nil {
				ch <- m
			}
		}
	}
}

// maxLabelValue bounds identity label values (Kubernetes names are at most
// 253 bytes; annotations on a plain containerd task are not bounded).
const maxLabelValue = 253

// clean makes an annotation-derived value a valid, bounded label value.
func clean(s string) string {
	if len(s) > maxLabelValue {
		s = s[:maxLabelValue]
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

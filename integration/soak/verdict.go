package main

import (
	"fmt"
	"math"
)

// minT is the t statistic from which a slope counts as real.
const minT = 3

// A point is one sample of one resource: minutes since the start, value.
type point struct{ t, v float64 }

// tolerance is how much a resource may rise across the judged window before
// it counts as a trend: the larger of an absolute amount and a fraction of
// the window's mean (noise from the workload's own churn).
type tolerance struct {
	abs, rel float64
}

// trend is the verdict on one series over the judged window.
type trend struct {
	series  string
	n       int     // samples in the window
	slope   float64 // least-squares slope, units per minute
	t       float64 // the slope's t statistic (slope / its standard error)
	rise    float64 // slope × window length: the fitted growth over the window
	allowed float64 // the tolerance in units
	mean    float64
	ok      bool
	why     string // set when it cannot be judged
}

// judge fits a least-squares line to the points at or after from (the end
// of the warm-up) and calls the series flat unless the fitted rise across
// the window exceeds the tolerance and the slope is significant (its t
// statistic at least minT: a shim whose crash-looping container is up at
// one sample and down at the next swings by its fds, and a few such
// swings can tilt a line without any growth). A falling series is flat.
// Fewer than three points cannot show a trend: not ok, with why.
func judge(series string, pts []point, from float64, tol tolerance) trend {
	var w []point
	for _, p := range pts {
		if p.t >= from {
			w = append(w, p)
		}
	}
	tr := trend{series: series, n: len(w)}
	if len(w) < 3 {
		tr.why = fmt.Sprintf("%d samples after warm-up, need 3", len(w))
		return tr
	}
	var st, sv float64
	for _, p := range w {
		st += p.t
		sv += p.v
	}
	n := float64(len(w))
	mt, mv := st/n, sv/n
	var num, den float64
	for _, p := range w {
		num += (p.t - mt) * (p.v - mv)
		den += (p.t - mt) * (p.t - mt)
	}
	if den == 0 {
		tr.why = "all samples at one time"
		return tr
	}
	tr.slope = num / den
	tr.rise = tr.slope * (w[len(w)-1].t - w[0].t)
	tr.mean = mv
	tr.allowed = math.Max(tol.abs, tol.rel*math.Abs(mv))
	var ssr float64
	for _, p := range w {
		r := p.v - (mv + tr.slope*(p.t-mt))
		ssr += r * r
	}
	if se := math.Sqrt(ssr/(n-2)) / math.Sqrt(den); se > 0 {
		tr.t = tr.slope / se
	} else {
		tr.t = math.Inf(1)
		if tr.slope <= 0 {
			tr.t = 0
		}
	}
	tr.ok = tr.rise <= tr.allowed || tr.t < minT
	return tr
}

package main

import "testing"

func series(f func(i int) float64, n int) []point {
	var pts []point
	for i := range n {
		pts = append(pts, point{t: float64(i), v: f(i)})
	}
	return pts
}

func TestJudge(t *testing.T) {
	tol := tolerance{abs: 2, rel: 0.05}
	for _, tc := range []struct {
		name string
		pts  []point
		ok   bool
	}{
		// An fd per minute: the leak of an OOM watch per restart.
		{"leaking", series(func(i int) float64 { return 30 + float64(i) }, 30), false},
		{"flat", series(func(int) float64 { return 30 }, 30), true},
		// Noise around a level: alternating ±3 is no trend.
		{"noisy but flat", series(func(i int) float64 { return 30 + float64(3*(i%2*2-1)) }, 30), true},
		// A warm-up climb, then flat: the window starts after it.
		{"warm-up then flat", series(func(i int) float64 { return 30 + min(float64(i), 10)*5 }, 30), true},
		// A slow leak that the warm-up hides until the window: still caught.
		{"slow leak after warm-up", series(func(i int) float64 {
			if i < 10 {
				return 100
			}
			return 100 + float64(i-10)/2
		}, 30), false},
		// The same leak under the swing of a crash-looping container's fds.
		{"noisy leak", series(func(i int) float64 { return 30 + float64(i) + float64(7*(i%2*2-1)) }, 30), false},
		// A swing of ±7 whose phase shifts once: the line tilts, no growth.
		{"swinging", series(func(i int) float64 {
			if i > 20 {
				return 23 + float64(14*(i%2))
			}
			return 23 + float64(14*((i+1)%2))
		}, 30), true},
		{"falling", series(func(i int) float64 { return 100 - float64(i) }, 30), true},
		{"a step up at the end", series(func(i int) float64 {
			if i >= 25 {
				return 60
			}
			return 30
		}, 30), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := judge(tc.name, tc.pts, 10, tol)
			if tr.why != "" {
				t.Fatal(tr.why)
			}
			if tr.ok != tc.ok {
				t.Fatalf("ok = %v (slope %.3f/min, rise %.2f, allowed %.2f), want %v", tr.ok, tr.slope, tr.rise, tr.allowed, tc.ok)
			}
		})
	}
}

func TestJudgeTooFewSamples(t *testing.T) {
	tr := judge("short", series(func(int) float64 { return 1 }, 12), 10, tolerance{abs: 1})
	if tr.ok || tr.why == "" {
		t.Fatalf("two samples judged: %+v", tr)
	}
}

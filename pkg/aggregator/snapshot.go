package aggregator

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/metrics"
)

// The aggregator's own view of exposition data: small, mergeable, with
// nothing in it that came from a shim unchecked. A snapshot holds one
// shim's metrics (a scrape or a final file) or an accumulation of many.

// aggregatorPrefix names the aggregator's own metrics; shims may not send them.
const aggregatorPrefix = metrics.Prefix + "aggregator_"

// Limits on what a shim may send. A real shim sends a few hundred series.
const (
	maxLabelsPerSeries  = 16
	maxBucketsPerSeries = 64
	maxLabelValueLen    = 1024
	maxHelpLen          = 512
)

type labelPair struct{ name, value string }

type bucket struct {
	upper float64 // finite, ascending
	count uint64  // cumulative
}

type series struct {
	labels []labelPair // sorted by name
	value  float64     // counter or gauge
	// histogram
	count   uint64
	sum     float64
	buckets []bucket // the +Inf bucket is count
}

type family struct {
	help   string
	typ    dto.MetricType // COUNTER, GAUGE or HISTOGRAM
	series map[string]*series
}

type snapshot struct {
	families map[string]*family
	n        int // series, all families
}

func newSnapshot() *snapshot { return &snapshot{families: make(map[string]*family)} }

var errTooLarge = errors.New("too large")

// limitedReader fails, rather than truncating, past its limit: a cut
// exposition could still parse.
type limitedReader struct {
	r    io.Reader
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// Exposition formats parseSnapshot reads. Live shims are asked for
// protobuf, which decodes several times faster than text with a fraction
// of the garbage; final snapshots are text, for people to read.
const (
	formatText = iota
	formatProto
)

// acceptProto asks promhttp for length-delimited protobuf.
const acceptProto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"

// parseSnapshot reads exposition from an untrusted source: at most
// maxBytes, at most maxSeries series. Only our prefix's counters,
// histograms and (with gauges) gauges are kept; anything malformed or
// foreign is dropped and counted. A syntax error rejects the whole input.
func parseSnapshot(r io.Reader, format int, maxBytes int64, maxSeries int, gauges bool) (_ *snapshot, dropped int, _ error) {
	lr := &limitedReader{r: r, left: maxBytes}
	s := newSnapshot()
	seen := make(map[string]bool)
	add := func(mf *dto.MetricFamily) error {
		name, typ := mf.GetName(), mf.GetType()
		dup := seen[name] // protobuf sends each family once; a repeat is a lie
		seen[name] = true
		keptType := typ == dto.MetricType_COUNTER || typ == dto.MetricType_HISTOGRAM || (gauges && typ == dto.MetricType_GAUGE)
		if dup || !model.LegacyValidation.IsValidMetricName(name) || !strings.HasPrefix(name, metrics.Prefix) || strings.HasPrefix(name, aggregatorPrefix) ||
			!keptType {
			dropped += len(mf.GetMetric())
			return nil
		}
		f := &family{help: truncate(mf.GetHelp(), maxHelpLen), typ: typ, series: make(map[string]*series, len(mf.GetMetric()))}
		for _, m := range mf.GetMetric() {
			se, ok := convertMetric(typ, m)
			if !ok {
				dropped++
				continue
			}
			k := seriesKey(se.labels)
			if _, dup := f.series[k]; dup {
				dropped++
				continue
			}
			if s.n >= maxSeries {
				return fmt.Errorf("more than %d series: %w", maxSeries, errTooLarge)
			}
			f.series[k] = se
			s.n++
		}
		if len(f.series) > 0 {
			s.families[name] = f
		}
		return nil
	}
	wrap := func(err error) error {
		if errors.Is(err, errTooLarge) {
			return fmt.Errorf("exposition over %d bytes: %w", maxBytes, errTooLarge)
		}
		return fmt.Errorf("parse exposition: %w", err)
	}

	if format == formatProto {
		br := bufio.NewReader(lr)
		// MaxSize: a length prefix may not make us allocate past the limit.
		opts := protodelim.UnmarshalOptions{MaxSize: maxBytes}
		for {
			mf := &dto.MetricFamily{}
			err := opts.UnmarshalFrom(br, mf)
			if errors.Is(err, io.EOF) {
				return s, dropped, nil
			}
			if err != nil {
				return nil, 0, wrap(err)
			}
			if err := add(mf); err != nil {
				return nil, 0, err
			}
		}
	}
	mfs, err := parseText(lr)
	if err != nil {
		return nil, 0, wrap(err)
	}
	for _, mf := range mfs {
		if err := add(mf); err != nil {
			return nil, 0, err
		}
	}
	return s, dropped, nil
}

func convertMetric(typ dto.MetricType, m *dto.Metric) (*series, bool) {
	if len(m.GetLabel()) > maxLabelsPerSeries {
		return nil, false
	}
	se := &series{labels: make([]labelPair, 0, len(m.GetLabel()))}
	for _, lp := range m.GetLabel() {
		// Text input was checked by the parser, protobuf only for UTF-8.
		if len(lp.GetValue()) > maxLabelValueLen || !model.LegacyValidation.IsValidLabelName(lp.GetName()) {
			return nil, false
		}
		se.labels = append(se.labels, labelPair{lp.GetName(), lp.GetValue()})
	}
	sort.Slice(se.labels, func(i, j int) bool { return se.labels[i].name < se.labels[j].name })
	for i := 1; i < len(se.labels); i++ {
		if se.labels[i].name == se.labels[i-1].name {
			return nil, false
		}
	}
	switch typ {
	case dto.MetricType_COUNTER:
		se.value = m.GetCounter().GetValue()
		return se, se.value >= 0 && !math.IsInf(se.value, 0) // NaN fails >= 0
	case dto.MetricType_GAUGE:
		se.value = m.GetGauge().GetValue()
		return se, !math.IsNaN(se.value) && !math.IsInf(se.value, 0)
	case dto.MetricType_HISTOGRAM:
		h := m.GetHistogram()
		if h == nil || h.GetSampleCountFloat() != 0 || len(h.GetBucket()) > maxBucketsPerSeries+1 {
			return nil, false // float or native histograms are not ours
		}
		se.count, se.sum = h.GetSampleCount(), h.GetSampleSum()
		if math.IsNaN(se.sum) || math.IsInf(se.sum, 0) {
			return nil, false
		}
		prev := bucket{upper: math.Inf(-1)}
		for _, b := range h.GetBucket() {
			if b.GetCumulativeCountFloat() != 0 {
				return nil, false
			}
			nb := bucket{upper: b.GetUpperBound(), count: b.GetCumulativeCount()}
			if math.IsInf(nb.upper, +1) {
				if nb.count != se.count {
					return nil, false
				}
				continue
			}
			if math.IsNaN(nb.upper) || nb.upper <= prev.upper || nb.count < prev.count || nb.count > se.count {
				return nil, false
			}
			se.buckets = append(se.buckets, nb)
			prev = nb
		}
		return se, true
	}
	return nil, false
}

func truncate(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "")
	}
	return s
}

// seriesKey is a series' identity within its family: its sorted labels.
func seriesKey(ls []labelPair) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.name)
		b.WriteByte(0xff)
		b.WriteString(l.value)
		b.WriteByte(0xfe)
	}
	return b.String()
}

func (se *series) clone() *series {
	c := *se
	c.buckets = slices.Clone(se.buckets)
	return &c
}

// family returns dst's family for name, creating it like src's; nil when
// dst already has that name with another type (a shim lying about types).
func (s *snapshot) family(name string, like *family) *family {
	f := s.families[name]
	if f == nil {
		f = &family{help: like.help, typ: like.typ, series: make(map[string]*series, len(like.series))}
		s.families[name] = f
	}
	if f.typ != like.typ {
		return nil
	}
	return f
}

// add adds src into s: counters and histograms always, gauges only if
// gauges is set. Past maxSeries new series are dropped; it returns how
// many were.
func (s *snapshot) add(src *snapshot, gauges bool, maxSeries int) (dropped int) {
	for name, sf := range src.families {
		if sf.typ == dto.MetricType_GAUGE && !gauges {
			continue
		}
		df := s.family(name, sf)
		if df == nil {
			dropped += len(sf.series)
			continue
		}
		for k, ss := range sf.series {
			ds := df.series[k]
			if ds == nil {
				if s.n >= maxSeries {
					dropped++
					continue
				}
				df.series[k] = ss.clone()
				s.n++
				continue
			}
			ds.value += ss.value
			ds.count += ss.count
			ds.sum += ss.sum
			ds.buckets = addBuckets(ds.buckets, ss.buckets)
		}
	}
	return dropped
}

// addDelta adds what final counted beyond prev, series by series, never
// less than zero: prev is what of the same shim instance is already in s.
func (s *snapshot) addDelta(final, prev *snapshot, maxSeries int) (dropped int) {
	d := newSnapshot()
	for name, ff := range final.families {
		if ff.typ == dto.MetricType_GAUGE {
			continue
		}
		var pf *family
		if prev != nil {
			if pf = prev.families[name]; pf != nil && pf.typ != ff.typ {
				pf = nil
			}
		}
		df := d.family(name, ff)
		for k, fs := range ff.series {
			var ps *series
			if pf != nil {
				ps = pf.series[k]
			}
			df.series[k] = deltaSeries(fs, ps)
			d.n++
		}
	}
	return s.add(d, false, maxSeries)
}

func deltaSeries(cur, prev *series) *series {
	if prev == nil {
		return cur.clone()
	}
	d := &series{labels: cur.labels}
	d.value = math.Max(0, cur.value-prev.value)
	d.sum = math.Max(0, cur.sum-prev.sum)
	if cur.count > prev.count {
		d.count = cur.count - prev.count
	}
	var run uint64
	for _, b := range cur.buckets {
		var c uint64
		if p := cumulativeAt(prev.buckets, b.upper); b.count > p {
			c = b.count - p
		}
		// Keep the result a valid cumulative histogram whatever the input.
		run = min(max(run, c), d.count)
		d.buckets = append(d.buckets, bucket{b.upper, run})
	}
	return d
}

// cumulativeAt is a histogram's count at or below upper, read from its
// largest bucket bound not above upper: exact when the layouts agree, a
// lower bound when a layout lacks upper.
func cumulativeAt(bs []bucket, upper float64) uint64 {
	i := sort.Search(len(bs), func(i int) bool { return bs[i].upper > upper })
	if i == 0 {
		return 0
	}
	return bs[i-1].count
}

// addBuckets adds b into a (owned by the caller). Shims of one build share
// a layout; across builds the union of the bounds is used.
func addBuckets(a, b []bucket) []bucket {
	if len(a) == len(b) {
		same := true
		for i := range a {
			if a[i].upper != b[i].upper {
				same = false
				break
			}
		}
		if same {
			for i := range a {
				a[i].count += b[i].count
			}
			return a
		}
	}
	uppers := make([]float64, 0, len(a)+len(b))
	for _, x := range a {
		uppers = append(uppers, x.upper)
	}
	for _, x := range b {
		uppers = append(uppers, x.upper)
	}
	slices.Sort(uppers)
	uppers = slices.Compact(uppers)
	out := make([]bucket, len(uppers))
	for i, u := range uppers {
		out[i] = bucket{u, cumulativeAt(a, u) + cumulativeAt(b, u)}
	}
	return out
}

// withoutGauges returns the counters and histograms of s (sharing series).
func (s *snapshot) withoutGauges() *snapshot {
	out := newSnapshot()
	for name, f := range s.families {
		if f.typ != dto.MetricType_GAUGE {
			out.families[name] = f
			out.n += len(f.series)
		}
	}
	return out
}

// toDTO renders s for the registry, sorted, without the families in
// exclude.
func (s *snapshot) toDTO(exclude map[string]bool) []*dto.MetricFamily {
	names := make([]string, 0, len(s.families))
	for name := range s.families {
		if !exclude[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	out := make([]*dto.MetricFamily, 0, len(names))
	for _, name := range names {
		f := s.families[name]
		keys := make([]string, 0, len(f.series))
		for k := range f.series {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		mf := &dto.MetricFamily{Name: proto.String(name), Help: proto.String(f.help), Type: f.typ.Enum(),
			Metric: make([]*dto.Metric, 0, len(keys))}
		for _, k := range keys {
			se := f.series[k]
			m := &dto.Metric{Label: make([]*dto.LabelPair, len(se.labels))}
			for i, l := range se.labels {
				m.Label[i] = &dto.LabelPair{Name: proto.String(l.name), Value: proto.String(l.value)}
			}
			switch f.typ {
			case dto.MetricType_COUNTER:
				m.Counter = &dto.Counter{Value: proto.Float64(se.value)}
			case dto.MetricType_GAUGE:
				m.Gauge = &dto.Gauge{Value: proto.Float64(se.value)}
			case dto.MetricType_HISTOGRAM:
				h := &dto.Histogram{SampleCount: proto.Uint64(se.count), SampleSum: proto.Float64(se.sum),
					Bucket: make([]*dto.Bucket, len(se.buckets))}
				for i, b := range se.buckets {
					h.Bucket[i] = &dto.Bucket{UpperBound: proto.Float64(b.upper), CumulativeCount: proto.Uint64(b.count)}
				}
				m.Histogram = h
			}
			mf.Metric = append(mf.Metric, m)
		}
		out = append(out, mf)
	}
	return out
}

// parseText runs the text parser, which panics on some malformed input
// (prometheus/common v0.70: "# TYPE A\n{}0", found by FuzzParseSnapshot);
// a shim's or a final snapshot's bytes must not take the aggregator down.
func parseText(r io.Reader) (mfs map[string]*dto.MetricFamily, err error) {
	defer func() {
		if v := recover(); v != nil {
			mfs, err = nil, fmt.Errorf("malformed exposition (text parser panicked: %v)", v)
		}
	}()
	p := expfmt.NewTextParser(model.LegacyValidation)
	return p.TextToMetricFamilies(r)
}

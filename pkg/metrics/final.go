package metrics

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// MaxPendingFinals bounds the final snapshots waiting in the state
// directory (tens of KiB each, in /run) while the aggregator is stopped.
const MaxPendingFinals = 256

// ErrTooManyFinals is returned by WriteFinal when MaxPendingFinals files
// already wait for the aggregator.
var ErrTooManyFinals = errors.New("too many final metrics snapshots waiting for the aggregator")

// WriteFinal writes the shim's counters and histograms (not its gauges:
// its tasks are gone) to dir/<name>.<instance>.prom, atomically: the
// aggregator sees the whole file or none. The shim calls it once, at exit,
// after its last recording and before it removes its metrics socket (see
// Aggregator for why that order matters). The instance in the file name
// keeps a restarted shim of the same name from overwriting a predecessor's
// snapshot that was not folded in yet.
//
// dir must exist: the aggregator creates it. Where no aggregator ever ran
// nothing piles up, and WriteFinal returns an error matching
// fs.ErrNotExist, which the caller may ignore.
func (r *Recorder) WriteFinal(dir, name string) (retErr error) {
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("final metrics snapshot: bad name %q", name)
	}
	if err := checkPrivateDir(dir); err != nil {
		return fmt.Errorf("final metrics directory: %w", err)
	}
	if n, err := countEntries(dir, MaxPendingFinals); err != nil {
		return fmt.Errorf("final metrics directory: %w", err)
	} else if n >= MaxPendingFinals {
		return fmt.Errorf("final metrics snapshot in %s: %w", dir, ErrTooManyFinals)
	}

	mfs, err := r.reg.Gather()
	if err != nil {
		return fmt.Errorf("final metrics snapshot: gather: %w", err)
	}
	// Temporary files start with a dot: the aggregator ignores them.
	f, err := os.CreateTemp(dir, "."+name+".*.tmp")
	if err != nil {
		return fmt.Errorf("final metrics snapshot: %w", err)
	}
	defer func() {
		if retErr != nil { // best effort: the snapshot is lost either way
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	w := bufio.NewWriter(f)
	// bufio.Writer keeps its first error and Flush returns it.
	_, _ = fmt.Fprintf(w, "# containerd-shim-custom-v2 final metrics of shim %s instance %s\n", name, r.instance)
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), Prefix) ||
			(mf.GetType() != dto.MetricType_COUNTER && mf.GetType() != dto.MetricType_HISTOGRAM) {
			continue
		}
		if err := enc.Encode(mf); err != nil {
			return fmt.Errorf("final metrics snapshot: encode %s: %w", mf.GetName(), err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("final metrics snapshot: write: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("final metrics snapshot: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("final metrics snapshot: close: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, FinalFileName(name, r.instance))); err != nil {
		return fmt.Errorf("final metrics snapshot: %w", err)
	}
	return nil
}

// countEntries counts dir's entries, stopping at limit.
func countEntries(dir string, limit int) (int, error) {
	d, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	names, err := d.Readdirnames(limit)
	if err != nil && len(names) == 0 && !errors.Is(err, io.EOF) {
		return 0, err
	}
	return len(names), nil
}

// FinalFileName is the file name of the final snapshot of instance of the
// shim called name: "<name>.<instance>.prom". Older shims wrote the same.
func FinalFileName(name, instance string) string { return name + "." + instance + finalSuffix }

// ParseFinalName splits a final snapshot's file name, "<name>.<instance>.prom";
// ok is false for anything else (temporary files start with a dot).
func ParseFinalName(file string) (name, instance string, ok bool) {
	stem, ok := strings.CutSuffix(file, finalSuffix)
	if !ok || strings.HasPrefix(file, ".") {
		return "", "", false
	}
	i := strings.LastIndexByte(stem, '.')
	if i <= 0 || i == len(stem)-1 {
		return "", "", false
	}
	return stem[:i], stem[i+1:], true
}

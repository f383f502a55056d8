package aggregator

import (
	"os"
	"testing"

	"github.com/containerd/log"
)

func TestMain(m *testing.M) {
	// The aggregator logs every bad input the tests feed it.
	// AGG_LOG=debug shows them.
	level := os.Getenv("AGG_LOG")
	if level == "" {
		level = "fatal"
	}
	_ = log.SetLevel(level)
	os.Exit(m.Run())
}

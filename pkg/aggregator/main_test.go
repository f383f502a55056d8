package aggregator

import (
	"os"
	"testing"

	"github.com/containerd/log"
)

func TestMain(m *testing.M) {
	// The aggregator logs every bad input the tests feed it.
	_ = log.SetLevel("fatal")
	os.Exit(m.Run())
}

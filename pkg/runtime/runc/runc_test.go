package runc

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"

	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/bundle"
	"github.com/custom-runtime/containerd-shim-custom-v2/pkg/runtime"
)

func TestConfig(t *testing.T) {
	c := Registration().Settings().(*Config)
	if err := c.Validate(); err != nil || c.BinaryName != "runc" || c.Root != DefaultRoot {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	if c.ClaimsBinary("runc") || c.ClaimsBinary("crun") {
		t.Fatal("runc is the default: it claims no binary")
	}
	c.ApplyRuncOptions(&runcoptions.Options{BinaryName: "/usr/bin/crun", Root: "/r", SystemdCgroup: true, NoPivotRoot: true, CriuWorkPath: "/w"})
	if c.BinaryName != "/usr/bin/crun" || c.Root != "/r" || !c.SystemdCgroup || !c.NoPivotRoot || c.CriuWorkPath != "/w" {
		t.Fatalf("%+v", c)
	}
	c.Root = "relative"
	if err := c.Validate(); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), `"runc.root"`) {
		t.Fatalf("got %v", err)
	}
}

func TestNewNamesAMissingBinary(t *testing.T) {
	c := Config{BinaryName: "no-such-runtime-xyz", Root: "/r"}
	_, err := New(c, "ns", bundle.Bundle(t.TempDir()))
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "runc.binary_name") || !strings.Contains(err.Error(), "no-such-runtime-xyz") {
		t.Fatalf("got %v", err)
	}
}

func TestCmdIO(t *testing.T) {
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	var cmd exec.Cmd
	CmdIO(&runtime.IO{Stdout: w}).Set(&cmd)
	if cmd.Stdout != w || cmd.Stdin != nil || cmd.Stderr != nil {
		t.Fatalf("only stdout is set: %+v", cmd)
	}
	if CmdIO(nil) != nil || ConsoleSocket(nil) != nil {
		t.Fatal("nil must stay an untyped nil for go-runc")
	}
	if ConsoleSocket(&runtime.Console{Path: "/x"}).Path() != "/x" {
		t.Fatal("console path")
	}
}

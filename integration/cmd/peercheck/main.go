// Command peercheck is the Go side of the peer-suite scripts
// (scripts/peer): it cleans up what a suite's daemon left behind and gates
// a run-all.sh run on containerd's runc shim.
//
//	peercheck leftovers [-runsc PATH] DIR...
//	    for each DIR: force-delete the runc/runsc containers whose state
//	    names DIR/, SIGKILL the processes whose command line names DIR/ or
//	    whose cwd is below DIR (and their descendants), unmount what is
//	    mounted below DIR. One line per thing removed on stderr; exit 1 if
//	    something could not be removed.
//	peercheck pids STRING
//	    the pids of the live processes whose command line contains STRING,
//	    one a line (this process and its ancestors excluded).
//	peercheck gate [DIR]
//	    the verdict over a run-all.sh report directory (default
//	    $OUT, else _output/peer): one line per comparison, "ok" or "FAIL",
//	    "not passed:" lines under a failure; exit 1 if any failed.
//
// It uses integration/harness, which the integration suite cleans up with
// too, so the scripts and the tests share one implementation.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/custom-runtime/containerd-shim-custom-v2/integration/harness"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: peercheck leftovers [-runsc PATH] DIR... | pids STRING | gate [DIR]")
}

// run dispatches a subcommand and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "leftovers":
		return leftovers(args[1:], stderr)
	case "pids":
		return pids(args[1:], stdout, stderr)
	case "gate":
		return gateCmd(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "peercheck: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func leftovers(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("leftovers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	runsc := fs.String("runsc", os.Getenv("RUNSC_BIN"), "runsc binary for deleting runsc containers (default $RUNSC_BIN, else runsc from PATH)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: peercheck leftovers [-runsc PATH] DIR...")
		return 2
	}
	// The scripts' log format (lib.sh log): "[15:04:05 name] message".
	logf := func(format string, a ...any) {
		fmt.Fprintf(stderr, "[%s peercheck] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, a...))
	}
	rc := 0
	for _, dir := range fs.Args() {
		abs, err := filepath.Abs(dir)
		if err != nil {
			logf("ERROR: %v", err)
			rc = 1
			continue
		}
		if abs == "/" {
			logf("ERROR: refusing to clean up under /")
			rc = 1
			continue
		}
		if err := harness.CleanUnder(abs, *runsc, logf); err != nil {
			logf("ERROR: clean up under %s: %v", abs, err)
			rc = 1
		}
	}
	return rc
}

func pids(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || args[0] == "" {
		fmt.Fprintln(stderr, "usage: peercheck pids STRING")
		return 2
	}
	ps, err := harness.ProcessesMatching(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "peercheck: %v\n", err)
		return 1
	}
	for _, p := range ps {
		fmt.Fprintln(stdout, p.Pid)
	}
	return 0
}

func gateCmd(args []string, stdout, stderr io.Writer) int {
	dir := os.Getenv("OUT")
	switch {
	case len(args) == 1:
		dir = args[0]
	case len(args) > 1:
		fmt.Fprintln(stderr, "usage: peercheck gate [DIR]")
		return 2
	case dir == "":
		dir = filepath.Join("_output", "peer")
	}
	if gate(dir, stdout) {
		return 0
	}
	return 1
}

package runsc

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
)

// checkFlags runs runsc once with the configured flags ("runsc list"), so an
// unknown flag, a bad value or a platform this runsc lacks is reported at
// create in runsc's own words, before anything exists. systrap (the
// default) falls back to ptrace on older runsc builds (Debian 12's 2022
// package); kvm is used only when asked for. Results are cached per shim.
func checkFlags(bin, platform string, flags []string) (string, []string, error) {
	err := probe(bin, platform, flags)
	if err != nil && strings.Contains(err.Error(), "oci-seccomp") {
		log.L.WithField("runsc", bin).Warn("runsc has no --oci-seccomp: seccomp profiles will not be enforced")
		flags = slices.DeleteFunc(slices.Clone(flags), func(f string) bool { return f == "--oci-seccomp=true" })
		err = probe(bin, platform, flags)
	}
	if err != nil && platform == "systrap" && strings.Contains(err.Error(), "platform") && probe(bin, "ptrace", flags) == nil {
		log.L.WithField("runsc", bin).Warn("runsc has no systrap platform; falling back to ptrace")
		return "ptrace", flags, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("runsc backend: fields \"runsc.platform\", \"runsc.network\", \"runsc.flags\": %s rejects %s: %w: %w",
			bin, strings.Join(append([]string{"--platform=" + platform}, flags...), " "), err, errdefs.ErrInvalidArgument)
	}
	return platform, flags, nil
}

var probes sync.Map // bin and flags -> error (nil: accepted)

// probeCacheDir keeps the flag sets a runsc binary accepted, across shim
// processes: every container without a pod gets a shim of its own, and a
// probe is a runsc run (~20 ms) on its create path. Entries are named by
// the binary's identity (path, size, mtime) and the flags, so an upgraded
// runsc is probed again; the directory is on /run, cleared at boot.
var probeCacheDir = filepath.Join(DefaultRoot, ".accepted-flags")

func probe(bin, platform string, flags []string) error {
	args := append([]string{"--platform=" + platform}, flags...)
	key := bin + "\x00" + strings.Join(args, "\x00")
	if v, ok := probes.Load(key); ok {
		err, _ := v.(error)
		return err
	}
	marker := acceptedMarker(bin, args)
	if marker != "" {
		if _, err := os.Stat(marker); err == nil {
			probes.Store(key, nil)
			return nil
		}
	}
	root, err := os.MkdirTemp("", "runsc-probe-")
	if err != nil {
		return nil // cannot tell; create will say
	}
	defer os.RemoveAll(root)
	out, err := combinedOutput(exec.Command(bin, append(append([]string{"--root=" + root}, args...), "list")...))
	if err != nil {
		// The first line says what is wrong; usage text follows.
		msg, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		err = errors.New(msg)
	} else if marker != "" {
		// Only acceptance is remembered: a refusal is rare and its message
		// should come from runsc each time.
		if mkErr := os.MkdirAll(filepath.Dir(marker), 0o700); mkErr == nil {
			_ = os.WriteFile(marker, nil, 0o600) // a cache: losing it costs one probe
		}
	}
	probes.Store(key, err)
	return err
}

// acceptedMarker names the cache entry for bin and args, "" when the
// binary cannot be identified.
func acceptedMarker(bin string, args []string) string {
	fi, err := os.Stat(bin)
	if err != nil {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%d\x00%s", bin, fi.Size(), fi.ModTime().UnixNano(), strings.Join(args, "\x00"))
	return filepath.Join(probeCacheDir, hex.EncodeToString(h.Sum(nil)))
}

// Package clilog reads the JSON log that runc and runsc write with
// --log-format=json, to turn "exit status 1" into the runtime's own words.
package clilog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Size is the log's current size: the offset before a command runs.
func Size(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// LastError returns the last error the runtime logged after offset off, so
// one command's failure is not explained by an older one's.
func LastError(path string, off int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
			last = e.Msg
		}
	}
	return last
}

// SpaceHint explains a runtime failure that left no message: the runtime
// writes its log and state next to the bundle, so a full filesystem makes
// it fail silently. It returns "" when there is room.
func SpaceHint(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return ""
	}
	if free := int64(st.Bavail) * st.Bsize; free < 1<<20 {
		return fmt.Sprintf("the filesystem of %s is full (%d bytes free)", dir, free)
	}
	return ""
}

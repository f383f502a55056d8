package install

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// WriteFile makes path hold data with mode perm, atomically: a reader (or
// a process exec'ing it) sees the old file or the new one, never part of
// either. The new content goes to a temporary file in the same directory,
// synced, then renamed over path; a process that has the old file open or
// running keeps its inode. Nothing is written when path already holds data
// with perm: changed reports whether it was.
func WriteFile(path string, data []byte, perm os.FileMode) (changed bool, err error) {
	if same, err := holds(path, data, perm); err != nil || same {
		return false, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".new-*")
	if err != nil {
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name()) // the error says what failed
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		_ = tmp.Close()
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	return true, syncDir(dir)
}

// CopyFile is WriteFile with the content of src (a binary from the image).
func CopyFile(src, dst string, perm os.FileMode) (bool, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("install %s: %w", dst, err)
	}
	return WriteFile(dst, data, perm)
}

// RemoveFile removes path; a missing file is no error. It reports whether
// there was one.
func RemoveFile(path string) (bool, error) {
	err := os.Remove(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("uninstall %s: %w", path, err)
	}
	return true, syncDir(filepath.Dir(path))
}

// holds reports whether path is a regular file with content data and
// permissions perm.
func holds(path string, data []byte, perm os.FileMode) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != perm || st.Size() != int64(len(data)) {
		return false, nil //nolint:nilerr // unreadable or different: rewritten
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, nil //nolint:nilerr // unreadable: rewritten
	}
	want := sha256.Sum256(data)
	return bytes.Equal(h.Sum(nil), want[:]), nil
}

// syncDir makes a rename or remove in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

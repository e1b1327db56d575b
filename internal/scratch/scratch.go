// Package scratch makes the temporary files and folders that sptctl writes an output
// in before renaming it into place, and removes those that a killed run left behind.
//
// A scratch entry is named PREFIX + the owner's process id + "-" + random digits
// (+ suffix), beside the output it becomes. Clean removes the entries of a prefix
// whose owner is no longer running; an entry of a live process (a concurrent run) is
// never touched.
package scratch

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// legacyAge is how old an entry without an owner in its name (written before owners
// were recorded) must be for Clean to remove it.
const legacyAge = time.Hour

func pattern(prefix string) string { return prefix + strconv.Itoa(os.Getpid()) + "-*" }

// CreateFile creates a new file in dir named PREFIX PID-RANDOM SUFFIX, open for
// writing, after removing dir's stale entries of prefix.
func CreateFile(dir, prefix, suffix string) (*os.File, error) {
	Clean(dir, prefix)
	return os.CreateTemp(dir, pattern(prefix)+suffix)
}

// Mkdir creates a new folder in dir named PREFIX PID-RANDOM, after removing dir's
// stale entries of prefix.
func Mkdir(dir, prefix string) (string, error) {
	Clean(dir, prefix)
	return os.MkdirTemp(dir, pattern(prefix))
}

// Clean removes the entries of dir named with prefix whose owner process has died.
// It reports nothing: a scratch entry that cannot be removed is left for later.
func Clean(dir, prefix string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if Stale(e.Name(), prefix, func() (time.Time, error) {
			info, err := e.Info()
			if err != nil {
				return time.Time{}, err
			}
			return info.ModTime(), nil
		}) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// Stale says whether an entry named name is a scratch entry of prefix whose owner has
// died: its process id is not running, or, for a name without one, modTime is over an
// hour old.
func Stale(name, prefix string, modTime func() (time.Time, error)) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" {
		return false
	}
	pidText, _, hasOwner := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidText)
	if hasOwner && err == nil && pid > 0 {
		return pid != os.Getpid() && !running(pid)
	}
	t, err := modTime()
	return err == nil && time.Since(t) > legacyAge
}

// running says whether process pid exists (signal 0 checks without sending one; EPERM
// means it exists but belongs to another user).
func running(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

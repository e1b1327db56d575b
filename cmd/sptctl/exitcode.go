package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// Exit codes, the same for every command (the README's table).
const (
	exitOK          = 0   // success
	exitFailure     = 1   // bad input (a file, a folder, a model) or a failed check
	exitUsage       = 2   // bad usage: unknown command or flag, bad or missing flag value
	exitInterrupted = 130 // Ctrl-C or SIGTERM
)

// usageError marks a mistake in how sptctl was called (exit code 2).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// oneLine is err's message on one line: every error sptctl prints is one line.
func oneLine(err error) string {
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(slices.DeleteFunc(lines, func(l string) bool { return l == "" }), " ")
}

// exitCode maps a command's error to its exit code.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var u usageError
	if errors.As(err, &u) || strings.HasPrefix(err.Error(), "Required flag") {
		return exitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		switch ec.ExitCode() {
		case exitOK, exitInterrupted:
			return ec.ExitCode()
		case 3: // urfave/cli's `help TOPIC` of an unknown command
			return exitUsage
		}
		return exitFailure
	}
	return exitFailure
}

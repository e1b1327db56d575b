package main

import (
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// Flags anywhere: urfave/cli v2 stops reading flags at a command's first positional
// argument, so `sptctl inspect MODEL --json` would see "--json" as a second MODEL.
// reorderArgs rewrites the command line before the parser sees it: global flags go
// before the command, the command's flags (each with its value, however it looks)
// before its positional arguments, and everything after a "--" stays a positional
// argument, in order.

// reorderArgs returns args (args[0] the program) with flags moved before positional
// arguments, or a usage error for an unknown command.
func reorderArgs(app *cli.App, args []string) ([]string, error) {
	if len(args) < 2 {
		return args, nil
	}
	global := []string{args[0]}
	rest := args[1:]
	// Global flags and the command name.
	var path []string // the command and its subcommands
	var cmd *cli.Command
	var tail []string
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			tail = rest[i:]
			break
		}
		if isFlag(a) {
			n := flagSpan(app.Flags, rest, i)
			global = append(global, rest[i:i+n]...)
			i += n - 1
			continue
		}
		cmd = app.Command(a)
		if cmd == nil {
			if a == "help" || a == "h" {
				return args, nil // the help command takes topics, not flags
			}
			return nil, usagef("unknown command %q (run `sptctl help` for the commands)", a)
		}
		path = append(path, a)
		tail = rest[i+1:]
		break
	}
	if cmd == nil {
		return args, nil // no command: the app's own help or a global flag's error
	}
	// Subcommands (e.g. `data fewshot`): flags given before the subcommand's name are
	// the subcommand's too.
	var flags, positional []string
	dashdash := false
	for i := 0; i < len(tail); i++ {
		a := tail[i]
		if dashdash {
			positional = append(positional, a)
			continue
		}
		if a == "--" {
			dashdash = true
			continue
		}
		if isFlag(a) {
			n := flagSpan(append(allFlags(cmd), app.Flags...), tail, i)
			flags = append(flags, tail[i:i+n]...)
			i += n - 1
			continue
		}
		if len(cmd.Subcommands) > 0 && len(positional) == 0 {
			if sub := cmd.Command(a); sub != nil {
				cmd = sub
				path = append(path, a)
				continue
			}
			return nil, usagef("unknown command %q (run `sptctl %s --help` for its commands)", strings.Join(append(path, a), " "), strings.Join(path, " "))
		}
		positional = append(positional, a)
	}
	if len(positional) > 0 && cmd.ArgsUsage == "" && len(cmd.Subcommands) == 0 && !slices.ContainsFunc(flags, isHelp) {
		return nil, usagef("%s takes no arguments, got %q (every input is a flag: --model FILE, ...)", strings.Join(path, " "), positional[0])
	}
	// Global flags given after the command go before it, where the parser reads them.
	var own []string
	for i := 0; i < len(flags); i++ {
		n := flagSpan(cmd.Flags, flags, i)
		if findFlag(cmd.Flags, flags[i]) == nil && findFlag(app.Flags, flags[i]) != nil {
			n = flagSpan(app.Flags, flags, i)
			global = append(global, flags[i:i+n]...)
		} else {
			own = append(own, flags[i:i+n]...)
		}
		i += n - 1
	}
	out := append(global, path...)
	out = append(out, own...)
	if len(positional) > 0 {
		out = append(out, "--")
		out = append(out, positional...)
	}
	return out, nil
}

// isFlag says whether a command-line word is a flag ("-x", "--name", "--name=v").
func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' && a != "--" }

// isHelp says whether a flag word asks for help.
func isHelp(a string) bool { n := flagName(a); return n == "help" || n == "h" }

// flagName is the name of a flag word, without dashes and "=value".
func flagName(a string) string {
	name := strings.TrimLeft(a, "-")
	name, _, _ = strings.Cut(name, "=")
	return name
}

// findFlag is the flag of flags that a flag word names, or nil.
func findFlag(flags []cli.Flag, a string) cli.Flag {
	name := flagName(a)
	if name == "help" || name == "h" {
		return cli.HelpFlag
	}
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	return nil
}

// flagSpan is how many words the flag at args[i] takes: 2 for a flag that takes a
// value given as the next word (whatever it looks like, as Go's flag package reads
// it), else 1. An unknown flag takes 1: the parser then reports it.
func flagSpan(flags []cli.Flag, args []string, i int) int {
	a := args[i]
	if strings.Contains(a, "=") {
		return 1
	}
	f := findFlag(flags, a)
	if f == nil || i+1 >= len(args) {
		return 1
	}
	if v, ok := f.(cli.DocGenerationFlag); ok && v.TakesValue() {
		return 2
	}
	return 1
}

// allFlags are the flags of c and of all its subcommands.
func allFlags(c *cli.Command) []cli.Flag {
	fs := slices.Clone(c.Flags)
	for _, s := range c.Subcommands {
		fs = append(fs, allFlags(s)...)
	}
	return fs
}

package main

import "github.com/urfave/cli/v2"

// commands lists sptctl's verbs, in pipeline order.
func commands() []*cli.Command {
	cmds := []*cli.Command{
		inspectCommand(),
		dataCommand(),
		sensitivityCommand(),
		allocateCommand(),
		injectCommand(),
		trainCommand(),
		exportCommand(),
		evalCommand(),
		runCommand(),
		tuneCommand(),
	}
	for _, c := range cmds {
		markUsageErrors(c)
	}
	return cmds
}

// markUsageErrors makes flag errors of c and its subcommands exit with code 2.
func markUsageErrors(c *cli.Command) {
	c.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err} }
	for _, sub := range c.Subcommands {
		markUsageErrors(sub)
	}
}

package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/sptctl/sptctl/data"
)

func dataCommand() *cli.Command {
	return &cli.Command{
		Name:  "data",
		Usage: "prepare data sets",
		Subcommands: []*cli.Command{
			{
				Name:  "fewshot",
				Usage: "carve a VTAB-1k-style few-shot task (PNG files and list files) out of an IDX set",
				Description: "fewshot draws --train and --val examples (disjoint) from the IDX train split and\n" +
					"--test examples from its test split, relabels the chosen classes from 0 in the\n" +
					"order given (--task classes), or labels each image by how far it was turned\n" +
					"(--task rotation: 0, 90, 180, 270 degrees), and writes OUT/images/... and the\n" +
					"list files trainN.txt, valN.txt, trainNvalM.txt and test.txt.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "from", Usage: "IDX data folder", Value: "/usr/share/datasets/fashion-mnist"},
					&cli.StringFlag{Name: "classes", Usage: "source classes, e.g. 5-9 or 0,2,4 (default: all)"},
					&cli.IntFlag{Name: "train", Usage: "training examples", Value: 800},
					&cli.IntFlag{Name: "val", Usage: "validation examples", Value: 200},
					&cli.IntFlag{Name: "test", Usage: "test examples (0: every test image of the classes)"},
					&cli.StringFlag{Name: "task", Usage: "classes | rotation", Value: data.TaskClasses},
					&cli.Int64Flag{Name: "seed", Usage: "random seed"},
					&cli.StringFlag{Name: "out", Usage: "folder to write", Required: true},
				},
				Action: func(c *cli.Context) error {
					if err := checkFewShot(c); err != nil {
						return err
					}
					var classes []int
					if s := c.String("classes"); s != "" {
						var err error
						if classes, err = data.ParseClasses(s); err != nil {
							return usagef("--classes: %v", err)
						}
					}
					opt := data.FewShotOptions{From: c.String("from"), Classes: classes, Train: c.Int("train"),
						Val: c.Int("val"), Test: c.Int("test"), Task: c.String("task"), Seed: c.Int64("seed"), Out: c.String("out")}
					if err := data.FewShot(opt); err != nil {
						return err
					}
					fmt.Fprintf(c.App.ErrWriter, "wrote %s\n", opt.Out)
					return nil
				},
			},
		},
	}
}

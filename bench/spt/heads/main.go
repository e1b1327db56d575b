// Command heads compares sensitivity heads (bench/spt/heads.sh): the seed-to-seed
// overlap of the most sensitive entries and the accuracy of SPT with each head, and
// writes bench/RESULTS-sensitivity.md; and LoRA-qv from the probe head and the budget
// sweep per head, bench/RESULTS-sensitivity-sweep.md (-sweep-out). With -overlap A B it prints the top-1% and
// top-5% overlap of two score files.
package main

import (
	"flag"
	"fmt"
	"log"
	"path/filepath"

	"github.com/sptctl/sptctl/sensitivity"
)

func main() {
	pair := flag.Bool("overlap", false, "print the top-1% and top-5% overlap of the two score files given as arguments")
	cache := flag.String("cache", "bench/cache/spt", "the benchmark cache (tasks/, runs/, heads/)")
	runs := flag.String("runs", "", "folder of the tune runs (default: CACHE/runs)")
	heads := flag.String("heads", "", "folder of the score files (default: CACHE/heads)")
	settings := flag.String("settings", "", "settings.json written by heads.sh")
	out := flag.String("out", "bench/RESULTS-sensitivity.md", "results file to write (empty: not written)")
	sweepOut := flag.String("sweep-out", "", "results file of LoRA-qv from the probe head and the sweep per head (empty: not written)")
	figures := flag.String("figures", "bench/figures", "folder of the figures")
	flag.Parse()
	log.SetFlags(0)
	if *pair {
		if flag.NArg() != 2 {
			log.Fatal("heads -overlap A B")
		}
		a, _, err := sensitivity.Read(flag.Arg(0))
		if err != nil {
			log.Fatal(err)
		}
		b, _, err := sensitivity.Read(flag.Arg(1))
		if err != nil {
			log.Fatal(err)
		}
		fa, fb := flat(a), flat(b)
		for _, q := range []float64{0.01, 0.05} {
			o, err := overlap(fa, fb, q)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("top-%g%%: %.3f\n", 100*q, o)
		}
		return
	}
	if *runs == "" {
		*runs = filepath.Join(*cache, "runs")
	}
	if *heads == "" {
		*heads = filepath.Join(*cache, "heads")
	}
	st, err := readSettings(*settings)
	if err != nil {
		log.Fatal(err)
	}
	if *out != "" {
		if err := report(*runs, *heads, st, *out, *figures); err != nil {
			log.Fatal(err)
		}
	}
	if *sweepOut != "" {
		if err := sweepReport(*runs, st, *sweepOut, *figures); err != nil {
			log.Fatal(err)
		}
	}
}

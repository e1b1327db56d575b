// Command robustness feeds sptctl bad inputs of every kind and checks how it refuses
// them: each case must exit 1 (bad input) or 2 (bad usage) with one line of sptctl's
// on stderr, no panic or stack trace, within its time limit, and no input file may
// change (sha256 of every file under the inputs folder, before and after each case).
// It writes the table of cases as markdown and exits 1 if any case breaks a rule.
//
//	bench/robustness.sh          # builds sptctl, runs this, writes bench/RESULTS-robustness.md
//	go run ./bench/robustness -sptctl bin/sptctl -out bench/RESULTS-robustness.md
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A case is one command run on bad input.
type testCase struct {
	input string   // what is wrong, in words
	args  []string // sptctl's arguments
}

type result struct {
	testCase
	code    int
	message string
	seconds float64
	problem string // the rule it breaks, "" if none
}

var (
	sptctl  = flag.String("sptctl", "bin/sptctl", "the sptctl binary")
	outFile = flag.String("out", "bench/RESULTS-robustness.md", "markdown table to write")
	work    = flag.String("work", "", "work folder (default: a temporary one, removed after)")
	limit   = flag.Duration("timeout", 120*time.Second, "time limit of one case")
	memory  = flag.Int64("memory", 8<<30, "address-space limit of one case, bytes (prlimit --as)")
	idx     = flag.String("idx", "/usr/share/datasets/fashion-mnist", "IDX data set the task is carved from")
	repo    = flag.String("repo", ".", "the sptctl checkout (for testdata/)")
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("robustness: ")
	flag.Parse()
	var err error
	if *sptctl, err = filepath.Abs(*sptctl); err != nil {
		log.Fatal(err)
	}
	dir := *work
	if dir == "" {
		if dir, err = os.MkdirTemp("", "sptctl-robustness-"); err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	for _, d := range []string{in, out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			log.Fatal(err)
		}
	}
	f := &fixtures{in: in, out: out}
	f.build()
	cases := f.cases()
	var results []result
	bad := 0
	for i, c := range cases {
		r := runCase(in, filepath.Join(out, strconv.Itoa(i)), c)
		if r.problem != "" {
			bad++
			log.Printf("case %d (%s, %s): %s", i+1, c.input, strings.Join(c.args[:min(2, len(c.args))], " "), r.problem)
		}
		results = append(results, r)
	}
	if err := writeTable(*outFile, results, bad); err != nil {
		log.Fatal(err)
	}
	log.Printf("%d cases, %d break a rule; wrote %s", len(results), bad, *outFile)
	if bad > 0 {
		os.Exit(1)
	}
}

// runCase runs one case in its own output folder (its working directory) and checks it.
func runCase(in, caseDir string, c testCase) result {
	os.MkdirAll(caseDir, 0o755)
	before := treeSums(in)
	ctx, cancel := context.WithTimeout(context.Background(), *limit)
	defer cancel()
	args := append([]string{fmt.Sprintf("--as=%d", *memory), "--", *sptctl}, c.args...)
	cmd := exec.CommandContext(ctx, "prlimit", args...)
	cmd.Dir = caseDir
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = nil, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{testCase: c, seconds: time.Since(start).Seconds()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		r.code = -1
		r.problem = err.Error()
	}
	text := strings.TrimSpace(stderr.String())
	lines := strings.Split(text, "\n")
	var errLines []string
	for _, l := range lines {
		if strings.HasPrefix(l, "sptctl: ") {
			errLines = append(errLines, l)
		}
	}
	last := lines[len(lines)-1]
	r.message = last
	switch {
	case r.problem != "":
	case ctx.Err() != nil:
		r.problem = fmt.Sprintf("did not finish within %v", *limit)
	case r.code != 1 && r.code != 2:
		r.problem = fmt.Sprintf("exit %d, want 1 or 2", r.code)
	case strings.Contains(text, "goroutine ") || strings.Contains(text, "panic:") || strings.Contains(text, "SIGSEGV") ||
		strings.Contains(text, "terminate called") || strings.Contains(text, "fatal error:"):
		r.problem = "a crash or stack trace on stderr"
	case len(errLines) != 1 || !strings.HasPrefix(last, "sptctl: "):
		r.problem = fmt.Sprintf("want one error line of sptctl's, last on stderr; got %d: %q", len(errLines), text)
	}
	if after := treeSums(in); r.problem == "" {
		if changed := diffSums(before, after); changed != "" {
			r.problem = "input changed: " + changed
		}
	}
	return r
}

// treeSums is the sha256 of every file under dir (symbolic links by their target text).
func treeSums(dir string) map[string]string {
	sums := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		var b []byte
		if d.Type()&fs.ModeSymlink != 0 {
			t, _ := os.Readlink(p)
			b = []byte("link:" + t)
		} else if b, err = os.ReadFile(p); err != nil {
			return nil
		}
		sums[p] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	return sums
}

func diffSums(a, b map[string]string) string {
	var changed []string
	for p, s := range a {
		if b[p] != s {
			changed = append(changed, p)
		}
	}
	sort.Strings(changed)
	return strings.Join(changed, ", ")
}

func writeTable(path string, rs []result, bad int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Robustness: %d bad inputs\n\n", len(rs))
	fmt.Fprintf(&b, "Made by `bench/robustness.sh` (builds sptctl, then `go run ./bench/robustness`), which\n"+
		"creates every input below in a temporary folder, runs each command with a %v time limit and a\n"+
		"%d GiB address-space limit, and checks that it exits 1 (bad input) or 2 (bad usage) with one\n"+
		"line of sptctl's on stderr (the last; progress lines may come before it), no panic or stack\n"+
		"trace, and that no file under the inputs folder changed (sha256 of each, before and after).\n"+
		"The script fails if any row breaks a rule. Paths: `in/` is the inputs folder, each case runs in\n"+
		"its own empty folder. Fixtures: `base.onnx` = testdata/tv_op17_dynamic.onnx (10 classes),\n"+
		"`other.onnx` = testdata/timm_op17.onnx, `task` = a 5-class Fashion-MNIST few-shot task, and\n"+
		"`scores.safetensors`, `plan.json`, `tunable.onnx`, `trained.onnx`, `sidecar/` made from them by sptctl.\n\n",
		*limit, *memory>>30)
	fmt.Fprintf(&b, "%d cases, %d exit 1, %d exit 2, **%d break a rule**.\n\n", len(rs), count(rs, 1), count(rs, 2), bad)
	fmt.Fprintf(&b, "| # | input | command | exit | message | ok |\n|---:|---|---|---:|---|---|\n")
	for i, r := range rs {
		ok := "yes"
		if r.problem != "" {
			ok = "**NO: " + esc(r.problem) + "**"
		}
		fmt.Fprintf(&b, "| %d | %s | `sptctl %s` | %d | %s | %s |\n", i+1, esc(r.input), esc(strings.Join(r.args, " ")), r.code, esc(r.message), ok)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func count(rs []result, code int) int {
	n := 0
	for _, r := range rs {
		if r.code == code {
			n++
		}
	}
	return n
}

func esc(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

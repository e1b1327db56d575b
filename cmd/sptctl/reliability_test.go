package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// TestMain lets a test run sptctl as a separate process (sptctlProcess): what ONNX
// Runtime writes to the process's stderr, and signals, can only be seen that way.
func TestMain(m *testing.M) {
	if os.Getenv("SPTCTL_TEST_RUN_MAIN") == "1" {
		os.Exit(run(append([]string{"sptctl"}, os.Args[1:]...), os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// sptctlCmd is sptctl (this test binary, run as the command) with args.
func sptctlCmd(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "SPTCTL_TEST_RUN_MAIN=1")
	return cmd
}

// sptctlProcess runs sptctl as a process and returns its exit code and stderr.
func sptctlProcess(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var errb bytes.Buffer
	cmd := sptctlCmd(args...)
	cmd.Stdout, cmd.Stderr = io.Discard, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), errb.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, errb.String()
}

// checkOneLine fails unless stderr is one line of sptctl's, with no stack trace.
func checkOneLine(t *testing.T, what, stderr string) {
	t.Helper()
	s := strings.TrimSpace(stderr)
	if strings.Contains(s, "\n") || !strings.HasPrefix(s, "sptctl: ") || strings.Contains(s, "goroutine ") {
		t.Errorf("%s: stderr should be one line of sptctl's: %q", what, stderr)
	}
}

func sha(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

func copyFile(t *testing.T, from, to string) string {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return to
}

func TestReorderArgs(t *testing.T) {
	app := newApp()
	cases := []struct{ in, want string }{
		{"inspect m.onnx --json", "inspect --json -- m.onnx"},
		{"inspect --json m.onnx", "inspect --json -- m.onnx"},
		{"inspect m.onnx --verbose", "--verbose inspect -- m.onnx"},
		{"--verbose inspect m.onnx", "--verbose inspect -- m.onnx"},
		{"inspect -- --json", "inspect -- --json"},
		{"inspect m.onnx -- --json", "inspect -- m.onnx --json"},
		// A flag's value is the next word, whatever it looks like.
		{"allocate --budget -5 --out m.onnx", "allocate --budget -5 --out m.onnx"},
		{"allocate --out --json --json", "allocate --out --json --json"},
		{"allocate --json --out=x.json", "allocate --json --out=x.json"},
		{"data fewshot --out d", "data fewshot --out d"},
		{"data --out d fewshot", "data fewshot --out d"},
		{"export --add-task a=x.onnx --merge --add-task b=y.onnx", "export --add-task a=x.onnx --merge --add-task b=y.onnx"},
		{"help inspect", "help inspect"},
		{"inspect --bogus m.onnx", "inspect --bogus -- m.onnx"},
	}
	for _, c := range cases {
		got, err := reorderArgs(app, append([]string{"sptctl"}, strings.Fields(c.in)...))
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if g := strings.Join(got[1:], " "); g != c.want {
			t.Errorf("%s: got %q, want %q", c.in, g, c.want)
		}
	}
	for _, bad := range []string{"bogus", "data bogus", "--verbose bogus m.onnx"} {
		if _, err := reorderArgs(app, append([]string{"sptctl"}, strings.Fields(bad)...)); exitCode(err) != exitUsage {
			t.Errorf("%s: %v, want a usage error", bad, err)
		}
	}
}

func TestFlagsAnywhere(t *testing.T) {
	model := "../../testdata/tv_op17_dynamic.onnx"
	code, before, stderr := sptctl(t, "inspect", "--json", model)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	code, after, stderr := sptctl(t, "inspect", model, "--json")
	if code != 0 || after != before {
		t.Fatalf("inspect MODEL --json: exit %d, %s; output differs from inspect --json MODEL: %v", code, stderr, after != before)
	}
	if !json.Valid([]byte(after)) {
		t.Fatal("inspect MODEL --json: not JSON")
	}
	if code, out, _ := sptctl(t, "inspect", model, "--verbose", "--json"); code != 0 || out != before {
		t.Errorf("a global flag after the argument: exit %d", code)
	}
	// After "--" everything is an argument, even what looks like a flag.
	code, _, stderr = sptctl(t, "inspect", "--", "--json")
	if code != 1 || !strings.Contains(stderr, "--json") {
		t.Errorf("inspect -- --json: exit %d, %q; want exit 1 naming the file --json", code, stderr)
	}
	// A value that looks like a flag is the value.
	code, _, stderr = sptctl(t, "allocate", "--model", model, "--strategy", "linear", "--budget", "-5", "--out", filepath.Join(t.TempDir(), "p.json"))
	if code != 2 || !strings.Contains(stderr, `"-5"`) {
		t.Errorf("--budget -5: exit %d, %q", code, stderr)
	}
	// Every command reads its flags after a stray argument too, and refuses the argument.
	for _, cmd := range commands() {
		for _, leaf := range leaves(cmd) {
			args := append(strings.Fields(leaf), "--bogus-flag")
			code, _, stderr := sptctl(t, args...)
			if code != 2 || !strings.Contains(stderr, "bogus-flag") {
				t.Errorf("%v: exit %d, %q; want exit 2 naming the unknown flag", args, code, stderr)
			}
			if leaf != "inspect" {
				args = append(strings.Fields(leaf), "stray", "--json")
				code, _, stderr = sptctl(t, args...)
				if code != 2 || !strings.Contains(stderr, `"stray"`) {
					t.Errorf("%v: exit %d, %q; want exit 2 naming the stray argument", args, code, stderr)
				}
			}
			args = append(strings.Fields(leaf), "--help")
			if code, _, stderr := sptctl(t, args...); code != 0 {
				t.Errorf("%v: exit %d: %s", args, code, stderr)
			}
		}
	}
}

// leaves are the command lines ("data fewshot") of c's runnable commands.
func leaves(c *cli.Command) []string {
	if len(c.Subcommands) == 0 {
		return []string{c.Name}
	}
	var out []string
	for _, s := range c.Subcommands {
		for _, l := range leaves(s) {
			out = append(out, c.Name+" "+l)
		}
	}
	return out
}

func TestExitCodes(t *testing.T) {
	model := "../../testdata/tv_op17_dynamic.onnx"
	dir := t.TempDir()
	out := filepath.Join(dir, "out.json")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"data", "bogus"}, 2, `unknown command "data bogus"`},
		{[]string{"help", "bogus"}, 2, "bogus"},
		{[]string{"inspect", "--bogus", model}, 2, "bogus"},
		{[]string{"allocate", "--model", model, "--strategy", "linear", "--rank", "0", "--out", out}, 2, "--rank 0"},
		{[]string{"allocate", "--model", model, "--strategy", "linear", "--rank", "1000000000", "--out", out}, 2, "--rank"},
		{[]string{"allocate", "--model", model, "--strategy", "linear", "--rank", "abc", "--out", out}, 2, "rank"},
		{[]string{"allocate", "--model", model, "--strategy", "linear", "--type", "foo", "--out", out}, 2, `--type "foo"`},
		{[]string{"allocate", "--model", model, "--strategy", "magic", "--out", out}, 2, "magic"},
		{[]string{"allocate", "--model", model, "--budget", "abc", "--out", out}, 2, "budget"},
		{[]string{"allocate", "--model", model, "--strategy", "linear", "--classes", "1000000000000", "--out", out}, 2, "--classes"},
		{[]string{"allocate", "--model", model, "--strategy", "linear", "--classes", "1e12", "--out", out}, 2, "classes"},
		{[]string{"allocate", "--model", model, "--strategy", "linear", "--alpha", "NaN", "--out", out}, 2, "--alpha"},
		{[]string{"allocate", "--out", out}, 2, "model"},
		{[]string{"sensitivity", "--model", model, "--data", dir, "--classes", "1000000000000"}, 2, "--classes"},
		{[]string{"sensitivity", "--model", model, "--data", dir, "--plot", filepath.Join(dir, "p.txt")}, 2, "--plot"},
		{[]string{"train", "--model", model, "--data", dir, "--lr", "NaN", "--out", filepath.Join(dir, "t.onnx")}, 2, "--lr"},
		{[]string{"train", "--model", model, "--data", dir, "--lr", "-1", "--out", filepath.Join(dir, "t.onnx")}, 2, "--lr"},
		{[]string{"train", "--model", model, "--data", dir, "--lr", "Inf", "--out", filepath.Join(dir, "t.onnx")}, 2, "--lr"},
		{[]string{"eval", "--model", model, "--data", dir, "--batch-size", "0"}, 2, "--batch-size"},
		{[]string{"train", "--model", model, "--data", dir, "--epochs", "0", "--out", filepath.Join(dir, "t.onnx")}, 2, "--epochs 0"},
		{[]string{"tune", "--model", model, "--data", dir, "--out", filepath.Join(dir, "tune"), "--budget", "abc"}, 2, "budget"},
		{[]string{"tune", "--model", model, "--data", dir, "--out", filepath.Join(dir, "tune"), "--lr", "NaN"}, 2, "--lr"},
		{[]string{"data", "fewshot", "--out", filepath.Join(dir, "fs"), "--task", "foo"}, 2, "--task"},
		{[]string{"inspect", filepath.Join(dir, "missing.onnx")}, 1, "missing.onnx"},
		// A flag value that does not fit the files is bad input, not bad usage.
		{[]string{"allocate", "--model", model, "--strategy", "linear", "--budget", "100M", "--out", out}, 1, "budget"},
	}
	for _, c := range cases {
		code, _, stderr := sptctl(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want exit %d and %q", c.args, code, stderr, c.code, c.want)
		}
		checkOneLine(t, strings.Join(c.args, " "), stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "tune")); err == nil {
		t.Error("tune with a bad flag made its output folder")
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a refused allocate wrote its plan")
	}
	// The mapping itself, for what is hard to cause in a test.
	for err, want := range map[error]int{
		nil:                                   0,
		errors.New("x"):                       1,
		usagef("x"):                           2,
		fmt.Errorf("tune: x: %w", usagef("")): 2,
		cli.Exit("interrupted", 130):          130,
		cli.Exit("other", 7):                  1,
	} {
		if got := exitCode(err); got != want {
			t.Errorf("exitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

// TestInterruptExits130 stops a training run with SIGINT: exit 130, a checkpoint, no
// model.
func TestInterruptExits130(t *testing.T) {
	dir := t.TempDir()
	task := fixture.FewShot(t, data.FewShotOptions{Classes: []int{0, 1}, Train: 8, Val: 0, Test: 2, Seed: 1, Out: filepath.Join(dir, "task")})
	model := "../../testdata/tv_op17_dynamic.onnx"
	plan, tunable := filepath.Join(dir, "plan.json"), filepath.Join(dir, "tunable.onnx")
	if code, _, stderr := sptctl(t, "allocate", "--model", model, "--strategy", "linear", "--classes", "2", "--out", plan); code != 0 {
		t.Fatal(stderr)
	}
	if code, _, stderr := sptctl(t, "inject", "--model", model, "--plan", plan, "--out", tunable); code != 0 {
		t.Fatal(stderr)
	}
	out := filepath.Join(dir, "trained.onnx")
	cmd := sptctlCmd("train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "100000", "--batch-size", "4", "--out", out)
	var errb syncBuffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for the first progress line: training is under way.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(errb.String(), "%") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("exit %v, want 130; stderr %s", err, errb.String())
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("an interrupted train wrote its model")
	}
	if _, err := os.Stat(out + ".ckpt"); err != nil {
		t.Errorf("no checkpoint: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for a process to write while a test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestORTLogQuiet: a model ONNX Runtime refuses gives sptctl's one line, and ONNX
// Runtime's own log only with --verbose.
func TestORTLogQuiet(t *testing.T) {
	dir := t.TempDir()
	m := &onnxpb.ModelProto{IrVersion: proto.Int64(8), OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: proto.Int64(17)}},
		Graph: &onnxpb.GraphProto{Name: proto.String("g"),
			Node: []*onnxpb.NodeProto{{OpType: proto.String("NoSuchOp"), Input: []string{"x"}, Output: []string{"y"}}},
			Input: []*onnxpb.ValueInfoProto{{Name: proto.String("x"), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{
				TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(1)}}}}},
			Output: []*onnxpb.ValueInfoProto{{Name: proto.String("y"), Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{
				TensorType: &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(1)}}}}}}}
	model := filepath.Join(dir, "unknown-op.onnx")
	if err := onnxio.Save(model, m); err != nil {
		t.Fatal(err)
	}
	in := copyFile(t, "../../testdata/tv_op17_dynamic.input.npy", filepath.Join(dir, "x.npy"))
	args := []string{"run", "--model", model, "--input", in, "--output", filepath.Join(dir, "y.npy")}
	code, stderr := sptctlProcess(t, args...)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr)
	}
	checkOneLine(t, "run on an unknown op", stderr)
	code, verbose := sptctlProcess(t, append([]string{"--verbose"}, args...)...)
	if code != 1 || !strings.Contains(verbose, "NoSuchOp") {
		t.Errorf("--verbose: exit %d, stderr %q", code, verbose)
	}
}

// TestOutputIsInput: no command overwrites one of its inputs, however the output is
// spelt: the same path, ./x, a/../x, a symbolic link to it, a hard link to it.
func TestOutputIsInput(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	model := copyFile(t, "../../testdata/tv_op17_dynamic.onnx", filepath.Join(dir, "model.onnx"))
	scores := copyFile(t, randomScores(t, model, 10), filepath.Join(dir, "scores.safetensors"))
	plan := filepath.Join(dir, "plan.json")
	if code, _, stderr := sptctl(t, "allocate", "--model", model, "--strategy", "linear", "--out", plan); code != 0 {
		t.Fatal(stderr)
	}
	tunable := filepath.Join(dir, "tunable.onnx")
	if code, _, stderr := sptctl(t, "inject", "--model", model, "--plan", plan, "--out", tunable); code != 0 {
		t.Fatal(stderr)
	}
	input := copyFile(t, "../../testdata/tv_op17_dynamic.input.npy", filepath.Join(dir, "x.npy"))
	task := filepath.Join(dir, "task") // the guard runs before the data is read
	os.Mkdir(task, 0o755)

	// spellings of path that name the same file.
	spellings := func(t *testing.T, path string) map[string]string {
		rel, _ := filepath.Rel(mustGetwd(t), path)
		link := filepath.Join(sub, "link-"+filepath.Base(path))
		os.Remove(link)
		if err := os.Symlink(path, link); err != nil {
			t.Fatal(err)
		}
		hard := filepath.Join(sub, "hard-"+filepath.Base(path))
		os.Remove(hard)
		if err := os.Link(path, hard); err != nil {
			t.Fatal(err)
		}
		return map[string]string{
			"same": path, "./": "./" + rel, "a/../": filepath.Join(dir, "sub", "..", filepath.Base(path)),
			"symlink": link, "hardlink": hard,
			"symlinked folder": filepath.Join(dir, "sublink", filepath.Base(path)),
		}
	}
	if err := os.Symlink(dir, filepath.Join(dir, "sublink")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		input string // the file the output must not overwrite
		args  func(out string) []string
	}{
		{"inject --out = --model", model, func(o string) []string { return []string{"inject", "--model", model, "--plan", plan, "--out", o} }},
		{"inject --out = --plan", plan, func(o string) []string { return []string{"inject", "--model", model, "--plan", plan, "--out", o} }},
		{"sensitivity --out = --model", model, func(o string) []string {
			return []string{"sensitivity", "--model", model, "--data", task, "--out", o}
		}},
		{"export --merge --out = --model", tunable, func(o string) []string {
			return []string{"export", "--model", tunable, "--merge", "--out", o}
		}},
		{"export --merge --out = --base", model, func(o string) []string {
			return []string{"export", "--model", tunable, "--base", model, "--merge", "--out", o}
		}},
		{"export --merge --out = the recorded base", model, func(o string) []string {
			return []string{"export", "--model", tunable, "--merge", "--out", o}
		}},
		{"train --out = --model", tunable, func(o string) []string {
			return []string{"train", "--model", tunable, "--data", task, "--out", o}
		}},
		{"train --checkpoint = --model", tunable, func(o string) []string {
			return []string{"train", "--model", tunable, "--data", task, "--out", filepath.Join(dir, "t.onnx"), "--checkpoint", o}
		}},
		{"run --output = --input", input, func(o string) []string {
			return []string{"run", "--model", model, "--input", input, "--output", o}
		}},
		{"run --output = --model", model, func(o string) []string {
			return []string{"run", "--model", model, "--input", input, "--output", o}
		}},
		{"allocate --out = --scores", scores, func(o string) []string {
			return []string{"allocate", "--model", model, "--scores", scores, "--budget", "10%", "--out", o}
		}},
		{"allocate --out = --model", model, func(o string) []string {
			return []string{"allocate", "--model", model, "--strategy", "linear", "--out", o}
		}},
		{"tune --out holding --model", tunable, func(o string) []string {
			return []string{"tune", "--model", tunable, "--data", task, "--out", filepath.Dir(o)}
		}},
	}
	for _, c := range cases {
		before := sha(t, c.input)
		for how, out := range spellings(t, c.input) {
			if c.name == "tune --out holding --model" && how != "same" {
				continue
			}
			code, _, stderr := sptctl(t, c.args(out)...)
			if code != 1 || !strings.Contains(stderr, "refusing to") {
				t.Errorf("%s (%s): exit %d, %q; want exit 1 refusing", c.name, how, code, stderr)
			}
			checkOneLine(t, c.name, stderr)
			if sha(t, c.input) != before {
				t.Fatalf("%s (%s) changed the input", c.name, how)
			}
		}
	}
	// A plot through a symbolic link to the model.
	link := filepath.Join(sub, "plot.png")
	os.Symlink(model, link)
	before := sha(t, model)
	code, _, stderr := sptctl(t, "sensitivity", "--model", model, "--data", task, "--out", filepath.Join(dir, "s.safetensors"), "--plot", link)
	if code != 1 || !strings.Contains(stderr, "refusing to") || sha(t, model) != before {
		t.Errorf("sensitivity --plot LINK-TO-MODEL: exit %d, %q", code, stderr)
	}
	// Two outputs of one command on the same file.
	code, _, stderr = sptctl(t, "sensitivity", "--model", model, "--data", task, "--out", filepath.Join(dir, "s.png"), "--plot", filepath.Join(dir, "s.png"))
	if code != 2 || !strings.Contains(stderr, "same file") {
		t.Errorf("--out = --plot: exit %d, %q", code, stderr)
	}
}

func mustGetwd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

// TestOutputFolders: a missing output folder is made before any work, and removed
// again when the command fails; one that cannot be made is refused before any work.
func TestOutputFolders(t *testing.T) {
	dir := t.TempDir()
	model := "../../testdata/tv_op17_dynamic.onnx"
	plan := filepath.Join(dir, "a", "b", "plan.json")
	if code, _, stderr := sptctl(t, "allocate", "--model", model, "--strategy", "linear", "--out", plan); code != 0 {
		t.Fatalf("allocate into a missing folder: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(plan); err != nil {
		t.Fatal(err)
	}
	// A failing command leaves no folder it made behind.
	code, _, stderr := sptctl(t, "inject", "--model", filepath.Join(dir, "missing.onnx"), "--plan", plan, "--out", filepath.Join(dir, "new", "deeper", "x.onnx"))
	if code != 1 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "new")); err == nil {
		t.Error("a failed inject left the folder it made")
	}
	// An output under a file cannot be written: refused before training starts.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	task := fixture.FewShot(t, data.FewShotOptions{Classes: []int{0, 1}, Train: 8, Val: 0, Test: 2, Seed: 1, Out: filepath.Join(dir, "task")})
	tunable := filepath.Join(dir, "tunable.onnx")
	if code, _, stderr := sptctl(t, "inject", "--model", model, "--plan", plan, "--out", tunable); code != 0 {
		t.Fatal(stderr)
	}
	start := time.Now()
	code, _, stderr = sptctl(t, "train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "1000", "--out", filepath.Join(file, "x.onnx"))
	if code != 1 || !strings.Contains(stderr, "file") || strings.Contains(stderr, "epoch") {
		t.Errorf("train --out FILE/x.onnx: exit %d, %q", code, stderr)
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Errorf("refused after %v: it trained first", el)
	}
	// train --out NEWDIR/x.onnx: the folder is made, the model written.
	out := filepath.Join(dir, "trained", "x.onnx")
	if code, _, stderr := sptctl(t, "train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "1", "--batch-size", "4", "--out", out); code != 0 {
		t.Fatalf("train into a missing folder: exit %d: %s", code, stderr)
	}
	if _, err := onnxio.Load(out); err != nil {
		t.Fatal(err)
	}
	// An output that is a folder is refused.
	code, _, stderr = sptctl(t, "allocate", "--model", model, "--strategy", "linear", "--out", dir)
	if code != 1 || !strings.Contains(stderr, "folder") {
		t.Errorf("allocate --out FOLDER: exit %d, %q", code, stderr)
	}
}

// TestPlotFailureKeepsFile: a sensitivity run that fails leaves an existing --plot
// file as it was, and leaves no temporary file.
func TestPlotFailureKeepsFile(t *testing.T) {
	dir := t.TempDir()
	png := copyFile(t, "../../testdata/tv_op17_dynamic.input.npy", filepath.Join(dir, "old.png"))
	before := sha(t, png)
	bad := filepath.Join(dir, "bad")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "train800.txt"), []byte("images/missing.png 0\n"), 0o644)
	code, _, stderr := sptctl(t, "sensitivity", "--model", "../../testdata/tv_op14_static.onnx", "--data", bad, "--out", filepath.Join(dir, "s.safetensors"), "--plot", png)
	if code != 1 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if sha(t, png) != before {
		t.Error("the failed run changed the existing plot")
	}
	// writeVia leaves the file as it was when the writer fails half-way.
	err := writeVia(png, func(tmp string) error {
		os.WriteFile(tmp, []byte("half"), 0o644)
		return errors.New("plot failed")
	})
	if err == nil || sha(t, png) != before {
		t.Errorf("writeVia: %v; file changed: %v", err, sha(t, png) != before)
	}
	if es, _ := os.ReadDir(dir); len(es) != 2 {
		t.Errorf("%d entries in the folder, want old.png and bad/ only", len(es))
	}
}

// TestFewShotRefusesForeignFiles: data fewshot never deletes files it did not write.
func TestFewShotRefusesForeignFiles(t *testing.T) {
	if _, err := os.Stat(fixture.FashionMNIST); err != nil {
		t.Skip("no Fashion-MNIST:", err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "task")
	args := []string{"data", "fewshot", "--classes", "0,1", "--train", "4", "--val", "2", "--test", "2", "--out", out}
	if code, _, stderr := sptctl(t, args...); code != 0 {
		t.Fatal(stderr)
	}
	// Its own folder: written again.
	if code, _, stderr := sptctl(t, args...); code != 0 {
		t.Fatalf("again onto its own folder: exit %d: %s", code, stderr)
	}
	// The user's file inside it: refused, and kept.
	mine := filepath.Join(out, "notes.txt")
	os.WriteFile(mine, []byte("mine"), 0o644)
	code, _, stderr := sptctl(t, args...)
	if code != 1 || !strings.Contains(stderr, "notes.txt") {
		t.Errorf("a folder with the user's file: exit %d, %q", code, stderr)
	}
	if b, _ := os.ReadFile(mine); string(b) != "mine" {
		t.Error("the user's file is gone")
	}
	// A folder it did not write at all.
	other := filepath.Join(dir, "other")
	os.Mkdir(other, 0o755)
	os.WriteFile(filepath.Join(other, "a.txt"), []byte("a"), 0o644)
	code, _, stderr = sptctl(t, append(args[:len(args)-1], other)...)
	if code != 1 || !strings.Contains(stderr, "refusing") {
		t.Errorf("a foreign folder: exit %d, %q", code, stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(other, "a.txt")); string(b) != "a" {
		t.Error("the foreign folder's file is gone")
	}
}

// TestStaleTempCleaned: what a killed run left beside an output is removed by the next
// run; what a running process owns is not.
func TestStaleTempCleaned(t *testing.T) {
	dir := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID := dead.Process.Pid
	live := exec.Command("sleep", "60")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { live.Process.Kill(); live.Wait() }()
	out := filepath.Join(dir, "plan.json")
	stale := []string{
		fmt.Sprintf(".plan.json.tmp-%d-123", deadPID),
		fmt.Sprintf(".sptctl-probe-%d-9", deadPID),
	}
	kept := []string{
		fmt.Sprintf(".plan.json.tmp-%d-456", live.Process.Pid),
		fmt.Sprintf(".other.json.tmp-%d-1", deadPID), // another output's: left to it
	}
	for _, n := range append(stale, kept...) {
		os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644)
	}
	if code, _, stderr := sptctl(t, "allocate", "--model", "../../testdata/tv_op17_dynamic.onnx", "--strategy", "linear", "--out", out); code != 0 {
		t.Fatal(stderr)
	}
	for _, n := range stale {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			t.Errorf("%s (of a dead process) is still there", n)
		}
	}
	for _, n := range kept {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s removed: %v", n, err)
		}
	}
}

func TestAllocateKeepHead(t *testing.T) {
	dir := t.TempDir()
	model := "../../testdata/tv_op17_dynamic.onnx" // a 10-class head
	scores := randomScores(t, model, 5)            // scored with a 5-class task head
	plan := filepath.Join(dir, "plan.json")
	if code, _, stderr := sptctl(t, "allocate", "--model", model, "--scores", scores, "--budget", "10%", "--keep-head", "--out", plan); code != 0 {
		t.Fatalf("allocate --keep-head: exit %d: %s", code, stderr)
	}
	tunable := filepath.Join(dir, "tunable.onnx")
	if code, _, stderr := sptctl(t, "inject", "--model", model, "--plan", plan, "--keep-head", "--out", tunable); code != 0 {
		t.Fatalf("inject --keep-head after allocate --keep-head: exit %d: %s", code, stderr)
	}
	code, _, stderr := sptctl(t, "allocate", "--model", model, "--scores", scores, "--keep-head", "--classes", "5", "--out", plan)
	if code != 2 || !strings.Contains(stderr, "--keep-head") {
		t.Errorf("--keep-head --classes 5 on a 10-class head: exit %d, %q", code, stderr)
	}
}

// TestOutputIsExternalData: an output that is the external data file of an input
// model is refused too (the model would lose its weights).
func TestOutputIsExternalData(t *testing.T) {
	dir := t.TempDir()
	m, err := onnxio.Load("../../testdata/tv_op17_dynamic.onnx")
	if err != nil {
		t.Fatal(err)
	}
	model := filepath.Join(dir, "model.onnx")
	if err := onnxio.SaveWith(model, m, onnxio.SaveOptions{ExternalData: "weights.bin"}); err != nil {
		t.Fatal(err)
	}
	weights := filepath.Join(dir, "weights.bin")
	if got, err := externalDataFiles(model); err != nil || len(got) != 1 || got[0] != "weights.bin" {
		t.Fatalf("externalDataFiles: %v, %v", got, err)
	}
	before := sha(t, weights)
	code, _, stderr := sptctl(t, "allocate", "--model", model, "--strategy", "linear", "--out", weights)
	if code != 1 || !strings.Contains(stderr, "external data") {
		t.Errorf("allocate --out WEIGHTS: exit %d, %q", code, stderr)
	}
	if sha(t, weights) != before {
		t.Error("the model's external data changed")
	}
	// A model without external data has none; a broken one is left to the loader.
	if got, err := externalDataFiles("../../testdata/tv_op17_dynamic.onnx"); err != nil || len(got) != 0 {
		t.Errorf("inline model: %v, %v", got, err)
	}
}

// TestHugeDeclaredInput: eval and sensitivity refuse a model whose declared image
// input is too large to preprocess, before allocating a batch of it.
func TestHugeDeclaredInput(t *testing.T) {
	dir := t.TempDir()
	task := fixture.FewShot(t, data.FewShotOptions{Classes: []int{0, 1}, Train: 4, Val: 0, Test: 2, Seed: 1, Out: filepath.Join(dir, "task")})
	for name, shape := range map[string][]int64{"wide": {1, 3, 1 << 20, 1 << 20}, "deep": {1, 1 << 40, 32, 32}} {
		m, err := onnxio.Load("../../testdata/tv_op17_dynamic.onnx")
		if err != nil {
			t.Fatal(err)
		}
		var ds []*onnxpb.TensorShapeProto_Dimension
		for _, d := range shape {
			ds = append(ds, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}})
		}
		m.Graph.Input[0].Type.GetTensorType().Shape = &onnxpb.TensorShapeProto{Dim: ds}
		model := filepath.Join(dir, name+".onnx")
		if err := onnxio.Save(model, m); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"eval", "--model", model, "--data", task},
			{"sensitivity", "--model", model, "--data", task, "--out", filepath.Join(dir, "s.safetensors")},
		} {
			code, _, stderr := sptctl(t, args...)
			if code != 1 || !strings.Contains(stderr, "declared image input") || !strings.Contains(stderr, model) {
				t.Errorf("%s %s: exit %d, %q", args[0], name, code, stderr)
			}
		}
	}
}

package main

import (
	"encoding/binary"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// cases are the bad-input runs, numbered by the kind of input they break.
func (f *fixtures) cases() []testCase {
	base, other, task := f.p("base.onnx"), f.p("other.onnx"), f.p("task")
	scores, plan, tunable, trained := f.p("scores.safetensors"), f.p("plan.json"), f.p("tunable.onnx"), f.p("trained.onnx")
	x := f.p("x.npy")
	var cs []testCase
	add := func(input string, args ...string) { cs = append(cs, testCase{input, args}) }

	// 1. Bad models, through every command that reads one.
	for _, m := range f.badModels() {
		if !strings.Contains(m.what, "graph input") { // a declaration only what runs the model reads
			add(m.what, "inspect", m.path)
			add(m.what, "allocate", "--model", m.path, "--strategy", "linear", "--out", "plan.json")
			add(m.what, "inject", "--model", m.path, "--plan", plan, "--out", "tunable.onnx")
		}
		switch {
		case strings.Contains(m.what, "graph input"), strings.Contains(m.what, "unknown op"), strings.Contains(m.what, "loop"),
			strings.Contains(m.what, "cycle"), strings.Contains(m.what, "symlink"):
			add(m.what, "eval", "--model", m.path, "--data", task)
			add(m.what, "sensitivity", "--model", m.path, "--data", task, "--batches", "1", "--batch-size", "4", "--out", "s.safetensors")
			add(m.what, "run", "--model", m.path, "--input", x, "--output", "y.npy")
		}
	}

	// 2. An output that is one of the inputs, however spelt.
	os.MkdirAll(f.p("links"), 0o755)
	os.Symlink(base, f.p("links/base-link.onnx"))
	os.Link(base, f.p("links/base-hard.onnx"))
	os.Symlink(x, f.p("links/x-link.npy"))
	os.Symlink(scores, f.p("links/scores-link.safetensors"))
	os.Symlink(tunable, f.p("links/tunable-link.onnx"))
	os.Symlink(f.p("links/base-link.onnx"), f.p("links/plot.png"))
	rel := func(p string) string { r, _ := filepath.Rel(f.in, p); return filepath.Join(f.in, "links", "..", r) }
	add("inject --out = --model", "inject", "--model", base, "--plan", plan, "--out", base)
	add("inject --out = --model, spelt a/../b", "inject", "--model", base, "--plan", plan, "--out", rel(base))
	add("inject --out a symlink to --model", "inject", "--model", base, "--plan", plan, "--out", f.p("links/base-link.onnx"))
	add("inject --out a hard link to --model", "inject", "--model", base, "--plan", plan, "--out", f.p("links/base-hard.onnx"))
	add("inject --out = --plan", "inject", "--model", base, "--plan", plan, "--out", plan)
	add("sensitivity --out = --model", "sensitivity", "--model", base, "--data", task, "--out", base)
	add("sensitivity --out a symlink to --model", "sensitivity", "--model", base, "--data", task, "--out", f.p("links/base-link.onnx"))
	add("sensitivity --plot a symlink (plot.png) to --model", "sensitivity", "--model", base, "--data", task, "--out", "s.safetensors", "--plot", f.p("links/plot.png"))
	add("export --merge --out = --model", "export", "--model", trained, "--merge", "--out", trained)
	add("export --merge --out = the base inject recorded", "export", "--model", trained, "--merge", "--out", base)
	add("export --merge --out a hard link to the base", "export", "--model", trained, "--merge", "--out", f.p("links/base-hard.onnx"))
	add("train --out = --model", "train", "--model", tunable, "--data", task, "--out", tunable)
	add("train --out a symlink to --model", "train", "--model", tunable, "--data", task, "--out", f.p("links/tunable-link.onnx"))
	add("train --checkpoint = --model", "train", "--model", tunable, "--data", task, "--out", "t.onnx", "--checkpoint", tunable)
	add("run --output = --input", "run", "--model", base, "--input", x, "--output", x)
	add("run --output a symlink to --input", "run", "--model", base, "--input", x, "--output", f.p("links/x-link.npy"))
	add("run --output = --model", "run", "--model", base, "--input", x, "--output", base)
	add("allocate --out = --scores", "allocate", "--model", base, "--scores", scores, "--budget", "10%", "--out", scores)
	add("allocate --out a symlink to --scores", "allocate", "--model", base, "--scores", scores, "--budget", "10%", "--out", f.p("links/scores-link.safetensors"))
	add("allocate --out = --model", "allocate", "--model", base, "--strategy", "linear", "--out", base)
	add("tune --out the folder holding --model as tunable.onnx", "tune", "--model", tunable, "--data", task, "--out", f.in)
	add("data fewshot --out = --from", "data", "fewshot", "--from", task, "--out", task)
	add("data fewshot --out a task folder holding the user's file", "data", "fewshot", "--from", *idx, "--classes", "0-4", "--train", "16", "--val", "8", "--test", "8", "--out", f.userTask())
	add("data fewshot --out a non-empty folder it did not write", "data", "fewshot", "--from", *idx, "--classes", "0-4", "--train", "16", "--out", f.p("outside"))
	f.write("existing.png", pseudoRandom(100))
	add("sensitivity --plot onto an existing file, run fails (bad data)", "sensitivity", "--model", base, "--data", f.p("bad"), "--out", "s.safetensors", "--plot", f.p("existing.png"))
	add("an output under a file (train --out FILE/x.onnx)", "train", "--model", tunable, "--data", task, "--out", filepath.Join(f.p("existing.png"), "x.onnx"))
	add("an output that is a folder (allocate --out DIR)", "allocate", "--model", base, "--strategy", "linear", "--out", f.in)

	// 3. Bad flags.
	add("unknown command", "bogus")
	add("unknown subcommand", "data", "bogus")
	add("unknown flag", "inspect", "--bogus", base)
	add("stray argument", "allocate", "--model", base, "stray")
	add("missing required flag", "allocate", "--strategy", "linear")
	add("--budget abc", "allocate", "--model", base, "--scores", scores, "--budget", "abc")
	add("--budget -5", "allocate", "--model", base, "--scores", scores, "--budget", "-5")
	add("--budget 150%", "allocate", "--model", base, "--scores", scores, "--budget", "150%")
	add("--budget larger than the model", "allocate", "--model", base, "--scores", scores, "--budget", "100M")
	add("--rank 0", "allocate", "--model", base, "--strategy", "linear", "--rank", "0")
	add("--rank 1e9", "allocate", "--model", base, "--strategy", "linear", "--rank", "1e9")
	add("--rank 1000000000", "allocate", "--model", base, "--strategy", "uniform", "--rank", "1000000000")
	add("--rank larger than the layers", "allocate", "--model", base, "--strategy", "uniform", "--rank", "4000", "--out", "p.json")
	add("--type foo", "allocate", "--model", base, "--strategy", "linear", "--type", "foo")
	add("--strategy magic", "allocate", "--model", base, "--strategy", "magic")
	add("--classes 1e12", "allocate", "--model", base, "--strategy", "linear", "--classes", "1e12")
	add("--classes 1000000000000", "allocate", "--model", base, "--strategy", "linear", "--classes", "1000000000000")
	add("--classes -3", "allocate", "--model", base, "--strategy", "linear", "--classes", "-3")
	add("--alpha NaN", "allocate", "--model", base, "--scores", scores, "--alpha", "NaN")
	add("sensitivity --classes 1e12", "sensitivity", "--model", base, "--data", task, "--classes", "1e12")
	add("sensitivity --classes 1000000000000", "sensitivity", "--model", base, "--data", task, "--classes", "1000000000000")
	add("sensitivity --batch-size 0", "sensitivity", "--model", base, "--data", task, "--batch-size", "0")
	add("sensitivity --plot with an unknown format", "sensitivity", "--model", base, "--data", task, "--plot", "p.txt")
	add("inject --classes 1000000000000", "inject", "--model", base, "--plan", plan, "--classes", "1000000000000")
	add("inject --dropout 1.5", "inject", "--model", base, "--plan", plan, "--dropout", "1.5")
	add("train --lr NaN", "train", "--model", tunable, "--data", task, "--lr", "NaN", "--out", "t.onnx")
	add("train --lr Inf", "train", "--model", tunable, "--data", task, "--lr", "Inf", "--out", "t.onnx")
	add("train --lr -0.1", "train", "--model", tunable, "--data", task, "--lr", "-0.1", "--out", "t.onnx")
	add("train --epochs 0", "train", "--model", tunable, "--data", task, "--epochs", "0", "--out", "t.onnx")
	add("train --batch-size 1000000000", "train", "--model", tunable, "--data", task, "--batch-size", "1000000000", "--out", "t.onnx")
	add("eval --batch-size 0", "eval", "--model", base, "--data", task, "--batch-size", "0")
	add("export --samples 0", "export", "--model", trained, "--merge", "--out", "m.onnx", "--samples", "0")
	add("export --merge and --sidecar", "export", "--model", trained, "--merge", "--sidecar", "d", "--task", "t")
	add("export --task ../x", "export", "--model", trained, "--sidecar", "d", "--task", "../x")
	add("tune --budget abc (before any stage runs)", "tune", "--model", base, "--data", task, "--out", "tune", "--budget", "abc")
	add("tune --lr NaN", "tune", "--model", base, "--data", task, "--out", "tune", "--lr", "NaN")
	add("tune --type foo", "tune", "--model", base, "--data", task, "--out", "tune", "--type", "foo")
	add("data fewshot --task foo", "data", "fewshot", "--from", *idx, "--out", "fs", "--task", "foo")
	add("data fewshot --classes 5-x", "data", "fewshot", "--from", *idx, "--out", "fs", "--classes", "5-x")
	add("help of an unknown command", "help", "bogus")

	// 4. Bad data.
	img := "images/train/00000.png"
	add("a label of 99999999999 in a VTAB list", "sensitivity", "--model", base, "--data", f.badTask("hugelabel", img+" 99999999999\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a label of 99999999999 (train)", "train", "--model", tunable, "--data", f.badTask("hugelabel2", img+" 99999999999\n", nil), "--val-split", "", "--out", "t.onnx")
	add("a label (77) outside the task's 5 classes", "sensitivity", "--model", base, "--data", f.badTask("label77", img+" 0\n"+img+" 77\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a label (77) outside the task's 5 classes (train)", "train", "--model", tunable, "--data", f.badTask("label77b", img+" 0\n"+img+" 77\n", nil), "--val-split", "", "--out", "t.onnx")
	add("a negative label", "sensitivity", "--model", base, "--data", f.badTask("neglabel", img+" -1\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a label that is no number", "sensitivity", "--model", base, "--data", f.badTask("textlabel", img+" cat\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a missing image", "sensitivity", "--model", base, "--data", f.badTask("missingimg", "images/train/nope.png 0\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("an image path out of the data folder", "sensitivity", "--model", base, "--data", f.badTask("escape", "../../base.onnx 0\n", nil), "--batches", "1", "--out", "s.safetensors")
	add("a text file as a PNG", "sensitivity", "--model", base, "--data", f.badTask("textpng", "images/bad.png 0\n", map[string][]byte{"images/bad.png": []byte("not a png")}), "--batches", "1", "--out", "s.safetensors")
	add("a 30000×30000 PNG (header only)", "sensitivity", "--model", base, "--data", f.badTask("hugepng", "images/huge.png 0\n", map[string][]byte{"images/huge.png": hugePNG(30000, 30000)}), "--batches", "1", "--out", "s.safetensors")
	add("a 30000×30000 PNG (eval)", "eval", "--model", base, "--data", f.badTask("hugepng2", "images/huge.png 0\n", map[string][]byte{"images/huge.png": hugePNG(30000, 30000), "test.txt": []byte("images/huge.png 0\n")}))
	add("an empty train list", "sensitivity", "--model", base, "--data", f.badTask("emptylist", "", nil), "--batches", "1", "--out", "s.safetensors")
	add("a missing data folder", "eval", "--model", base, "--data", f.p("nodata"))
	add("a data folder with no lists or images", "eval", "--model", base, "--data", f.p("outside"))
	add("a split that does not exist", "eval", "--model", base, "--data", task, "--split", "nope")
	add("a data set with more classes than the model's head (5-class model, 10-class data)", "eval", "--model", trained, "--data", f.badTask("tenclass", img+" 9\n", map[string][]byte{"test.txt": []byte(img + " 9\n")}))

	// 5. Bad plans (inject).
	add("a plan layer not in the model (blocks.99.q)", "inject", "--model", base, "--plan", f.plan("layer99", func(p map[string]any) {
		firstLayer(p)["name"] = "blocks.99.q"
	}), "--out", "t.onnx")
	add("a plan layer with an unknown weight", "inject", "--model", base, "--plan", f.plan("weight", func(p map[string]any) {
		firstLayer(p)["weight"] = "no.such.weight"
	}), "--out", "t.onnx")
	add("a plan rank of 0", "inject", "--model", base, "--plan", f.plan("rank0", func(p map[string]any) { setRank(p, 0) }), "--out", "t.onnx")
	add("a negative plan rank", "inject", "--model", base, "--plan", f.plan("rankneg", func(p map[string]any) { setRank(p, -4) }), "--out", "t.onnx")
	add("a plan rank of 1e9", "inject", "--model", base, "--plan", f.plan("rankhuge", func(p map[string]any) { setRank(p, 1e9) }), "--out", "t.onnx")
	add("plan totals that disagree with its layers", "inject", "--model", base, "--plan", f.plan("totals", func(p map[string]any) {
		p["totals"].(map[string]any)["total"] = 12345.0
	}), "--out", "t.onnx")
	add("a plan head of 10^12 classes", "inject", "--model", base, "--plan", f.plan("headhuge", func(p map[string]any) {
		p["head"].(map[string]any)["classes"] = 1e12
	}), "--out", "t.onnx")
	add("a plan of another model", "inject", "--model", base, "--plan", f.p("other-plan.json"), "--out", "t.onnx")
	add("a plan that is not JSON", "inject", "--model", base, "--plan", f.write("badplans/text.json", []byte("plan: yes")), "--out", "t.onnx")
	pb, _ := os.ReadFile(plan)
	add("a truncated plan", "inject", "--model", base, "--plan", f.write("badplans/trunc.json", pb[:len(pb)/2]), "--out", "t.onnx")
	add("a model file as the plan", "inject", "--model", base, "--plan", base, "--out", "t.onnx")

	// 6. Bad score files (allocate).
	sc := func(what, name string, edit func(h map[string]any, data []byte) []byte) {
		add(what, "allocate", "--model", base, "--scores", f.scoreFile(name, edit), "--budget", "10%", "--out", "p.json")
	}
	sc("negative scores", "negative", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		a, _ := offsets(e)
		putFloat(d, a, -5)
		return d
	})
	sc("an infinite score", "inf", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		a, _ := offsets(e)
		putFloat(d, a, float32(math.Inf(1)))
		return d
	})
	sc("a NaN score", "nan", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		a, _ := offsets(e)
		putFloat(d, a, float32(math.NaN()))
		return d
	})
	sc("overlapping offsets", "overlap", func(h map[string]any, d []byte) []byte {
		names := []string{}
		for k := range h {
			if k != "__metadata__" {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		e0, e1 := h[names[0]].(map[string]any), h[names[1]].(map[string]any)
		a0, _ := offsets(e0)
		a1, b1 := offsets(e1)
		e1["data_offsets"] = []any{float64(a0), float64(a0 + b1 - a1)}
		return d
	})
	sc("a transposed shape", "transposed", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		s := e["shape"].([]any)
		if s[0] == s[1] {
			s[0], s[1] = s[0].(float64)*2, s[1].(float64)/2
		} else {
			s[0], s[1] = s[1], s[0]
		}
		return d
	})
	sc("a shape of 2^62 × 4 (overflows)", "overflow", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		e["shape"] = []any{float64(1 << 62), 4.0}
		return d
	})
	sc("an F64 tensor", "f64", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		e["dtype"] = "F64"
		return d
	})
	sc("a tensor not in the model", "unknownname", func(h map[string]any, d []byte) []byte {
		k, e := firstTensor(h)
		delete(h, k)
		h["no.such.weight"] = e
		return d
	})
	sc("offsets past the end of the file", "pastend", func(h map[string]any, d []byte) []byte {
		_, e := firstTensor(h)
		a, b := offsets(e)
		e["data_offsets"] = []any{float64(a + len(d)), float64(b + len(d))}
		return d
	})
	sb, _ := os.ReadFile(scores)
	add("a truncated score file", "allocate", "--model", base, "--scores", f.write("badscores/trunc.safetensors", sb[:len(sb)/2]), "--budget", "10%", "--out", "p.json")
	huge := append([]byte(nil), sb...)
	binary.LittleEndian.PutUint64(huge, 1<<60)
	add("a score header length of 2^60", "allocate", "--model", base, "--scores", f.write("badscores/hugeheader.safetensors", huge), "--budget", "10%", "--out", "p.json")
	add("an empty score file", "allocate", "--model", base, "--scores", f.write("badscores/empty.safetensors", nil), "--budget", "10%", "--out", "p.json")
	add("the scores of another model", "allocate", "--model", other, "--scores", scores, "--budget", "10%", "--out", "p.json")

	// 7. Sidecars, adapters, checkpoints of another base; NaN training.
	sideBad := f.p("sidebad")
	filepath.WalkDir(f.p("sidecar"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			f.copy(p, filepath.Join("sidebad", filepath.Base(p)))
		}
		return nil
	})
	bd, _ := os.ReadFile(filepath.Join(sideBad, "base.data"))
	for i := 0; i < len(bd); i += 4096 {
		bd[i] ^= 0x55
	}
	f.write("sidebad/base.data", bd)
	add("a sidecar whose base.data holds other weights", "eval", "--model", filepath.Join(sideBad, "t.onnx"), "--data", task)
	add("a sidecar whose base.data holds other weights (run)", "run", "--model", filepath.Join(sideBad, "t.onnx"), "--input", x, "--output", "y.npy")
	ck, _ := os.ReadFile(trained + ".ckpt")
	if len(ck) > 0 {
		add("a truncated checkpoint (train --resume)", "train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "2", "--batch-size", "8",
			"--checkpoint", f.write("badckpt/trunc.ckpt", ck[:len(ck)/2]), "--resume", "--out", "t.onnx")
	}
	add("a checkpoint from another model (train --resume)", "train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "2", "--batch-size", "8",
		"--checkpoint", f.copy(scores, "badckpt/other.ckpt"), "--resume", "--out", "t.onnx")
	add("a base model that is not the one injected from (export --base other)", "export", "--model", trained, "--merge", "--base", other, "--out", "m.onnx")
	add("--lr 1e30 (training diverges to NaN/Inf)", "train", "--model", tunable, "--data", task, "--val-split", "", "--epochs", "1", "--batch-size", "8", "--lr", "1e30", "--out", "t.onnx")
	add("an adapter file that is a model", "eval", "--model", base, "--data", task, "--adapter", base)

	// 8. Bad .npy inputs (run).
	add("a truncated .npy", "run", "--model", base, "--input", f.write("badnpy/trunc.npy", npyHeader("<f4", "(2, 3, 32, 32)", make([]byte, 100))), "--output", "y.npy")
	add("a .npy declaring 2^40 × 2^40 elements", "run", "--model", base, "--input", f.write("badnpy/huge.npy", npyHeader("<f4", "(1099511627776, 1099511627776)", nil)), "--output", "y.npy")
	add("a .npy of float64", "run", "--model", base, "--input", f.write("badnpy/f8.npy", npyHeader("<f8", "(1, 3, 32, 32)", make([]byte, 8*3*32*32))), "--output", "y.npy")
	add("a .npy of the wrong shape", "run", "--model", base, "--input", f.write("badnpy/shape.npy", npyHeader("<f4", "(1, 3, 16, 16)", make([]byte, 4*3*16*16))), "--output", "y.npy")
	add("a .npy with a bad magic", "run", "--model", base, "--input", f.write("badnpy/magic.npy", []byte("PK\x03\x04 not numpy")), "--output", "y.npy")
	add("a .npy with a negative dim", "run", "--model", base, "--input", f.write("badnpy/neg.npy", npyHeader("<f4", "(-1, 3, 32, 32)", nil)), "--output", "y.npy")
	return cs
}

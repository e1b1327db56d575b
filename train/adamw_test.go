package train

import (
	"encoding/json"
	"math"
	"os/exec"
	"testing"
)

// TestAdamWMatchesPyTorch runs three AdamW steps in Go and in PyTorch's
// torch.optim.AdamW (weight decay on the matrix, none on the vector, as Fit groups
// them) and compares the weights.
func TestAdamWMatchesPyTorch(t *testing.T) {
	w2 := []float32{0.5, -1, 2, 0.25, -0.75, 1.5}
	w1 := []float32{0.1, -0.2, 0.3}
	grads := [][]float32{{0.1, -0.3, 0.2, 0.05, -0.01, 0.4}, {-0.2, 0.1, 0.3, -0.1, 0.2, -0.05}, {0.3, 0.3, -0.1, 0.2, 0.1, 0.0}}
	lrs := []float64{1e-3, 5e-3, 2e-3}
	opt := NewAdamW(0.05)
	for s := range grads {
		opt.Begin()
		opt.Update("w2", []int64{2, 3}, w2, grads[s], lrs[s])
		opt.Update("w1", []int64{3}, w1, grads[s][:3], lrs[s])
	}
	script := `
import json, torch
w2 = torch.nn.Parameter(torch.tensor([[0.5, -1, 2], [0.25, -0.75, 1.5]]))
w1 = torch.nn.Parameter(torch.tensor([0.1, -0.2, 0.3]))
o = torch.optim.AdamW([{"params": [w2], "weight_decay": 0.05}, {"params": [w1], "weight_decay": 0.0}], lr=1e-3)
G = [[0.1, -0.3, 0.2, 0.05, -0.01, 0.4], [-0.2, 0.1, 0.3, -0.1, 0.2, -0.05], [0.3, 0.3, -0.1, 0.2, 0.1, 0.0]]
for g, lr in zip(G, [1e-3, 5e-3, 2e-3]):
    for grp in o.param_groups: grp["lr"] = lr
    w2.grad = torch.tensor(g).reshape(2, 3); w1.grad = torch.tensor(g[:3])
    o.step()
print(json.dumps([w2.detach().flatten().tolist(), w1.detach().tolist()]))`
	out, err := exec.Command("/usr/bin/python3", "-c", script).Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	var want [][]float64
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}
	for i, got := range [][]float32{w2, w1} {
		for j := range got {
			if d := math.Abs(float64(got[j]) - want[i][j]); d > 1e-6 {
				t.Errorf("param %d[%d] = %v, PyTorch %v", i, j, got[j], want[i][j])
			}
		}
	}
}

func TestCosineLR(t *testing.T) {
	if got := CosineLR(1, 0, 0, 10, 100); math.Abs(got-0.1) > 1e-12 {
		t.Errorf("first warm-up step: %v, want 0.1", got)
	}
	if got := CosineLR(1, 0, 9, 10, 100); got != 1 {
		t.Errorf("last warm-up step: %v, want 1", got)
	}
	if got := CosineLR(1, 0, 10, 10, 100); got != 1 {
		t.Errorf("first cosine step: %v, want 1", got)
	}
	if got := CosineLR(1, 0, 55, 10, 100); math.Abs(got-0.5) > 1e-12 {
		t.Errorf("halfway: %v, want 0.5", got)
	}
	if got := CosineLR(1, 0.01, 99, 10, 100); got < 0.01 || got > 0.02 {
		t.Errorf("last step: %v, want just above the minimum", got)
	}
}

func TestDecays(t *testing.T) {
	for _, c := range []struct {
		shape []int64
		want  bool
	}{{[]int64{8, 32}, true}, {[]int64{32}, false}, {[]int64{1, 1, 32}, false}, {[]int64{5}, false}, {[]int64{3, 1, 4}, true}} {
		if Decays(c.shape) != c.want {
			t.Errorf("Decays(%v) = %v", c.shape, !c.want)
		}
	}
}

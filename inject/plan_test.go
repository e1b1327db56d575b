package inject

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
)

// A version 1 plan (injected records with role strings) reads as the same records
// with tuners and parts.
func TestDecodePlanVersion1(t *testing.T) {
	f := fixture.Load(t, fixture.Paths(t)[0])
	p := Variants[0].plan(t, f)
	if err := Apply(f.M, p, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	s, _ := onnxio.Metadata(f.M, meta.KeyPlan)
	now, err := DecodePlan([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		t.Fatal(err)
	}
	raw["version"] = 1
	role := map[[2]string]string{
		{"lora", "A"}: "lora_A", {"lora", "B"}: "lora_B", {"adapter", "down"}: "adapter_down",
		{"adapter", "down_bias"}: "adapter_down_bias", {"adapter", "up"}: "adapter_up", {"adapter", "up_bias"}: "adapter_up_bias",
		{"sparse", "values"}: "sparse_values", {"sparse", "indices"}: "sparse_indices", {"whole", "whole"}: "whole",
		{"head", "weight"}: "whole", {"head", "bias"}: "whole",
	}
	for _, x := range raw["injected"].([]any) {
		r := x.(map[string]any)
		k := [2]string{r["tuner"].(string), r["part"].(string)}
		if role[k] == "" {
			t.Fatalf("record %v has no version 1 role", r)
		}
		if k[0] == "head" {
			r["of"] = "head." + k[1]
		}
		r["role"] = role[k]
		delete(r, "tuner")
		delete(r, "part")
	}
	b, _ := json.Marshal(raw)
	old, err := DecodePlan(b)
	if err != nil {
		t.Fatal(err)
	}
	if old.Version != PlanVersion || !slices.Equal(old.Injected, now.Injected) {
		t.Errorf("version 1 records read as\n%v\nwant\n%v", old.Injected, now.Injected)
	}
	raw["injected"].([]any)[0].(map[string]any)["role"] = "lora_C"
	b, _ = json.Marshal(raw)
	if _, err := DecodePlan(b); err == nil {
		t.Error("unknown version 1 role accepted")
	}
}

package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sptctl/sptctl/onnxio"
)

// PlanVersion is the version of the plan.json schema this package writes. It reads
// version 1 too: its entries are the same, and the injected records of version 1
// (role strings) are translated once, on reading, into tuner records.
const PlanVersion = 2

// Layer modes.
const (
	ModeLoRA    = "lora"    // LoRA module in parallel with the layer
	ModeAdapter = "adapter" // Adapter in sequence on the layer's output
	ModeSparse  = "sparse"  // the listed entries of the weight, as a trainable delta
	ModeFull    = "full"    // the whole tensor is trainable (vectors; matrices with --strategy full)
)

// Plan is what Allocate decides and Apply injects: which parameters of a base model
// become trainable, and how. It is saved as plan.json and stored in the injected
// model's metadata (meta.KeyPlan).
type Plan struct {
	Version         int         `json:"version"`
	BaseFingerprint string      `json:"base_fingerprint"` // onnxio.Fingerprint of the base model
	Options         PlanOptions `json:"options"`
	Dim             int         `json:"dim"`
	Blocks          int         `json:"blocks"`

	// The SPT search (zero for the baseline strategies). Candidates is the number of
	// ranked entries; Tau the sensitive-set size whose structured set the plan uses;
	// TauClosest the size whose reference total was closest to the budget; Fill the
	// number of extra sparse entries added after the structured set was fixed (see
	// docs/ARCHITECTURE.md, "Why the allocator fills"); Note says in words what happened.
	Candidates int64  `json:"candidates,omitempty"`
	Tau        int64  `json:"tau"`
	TauClosest int64  `json:"tau_closest"`
	Fill       int64  `json:"fill"`
	Note       string `json:"note,omitempty"`

	Layers     []LayerPlan  `json:"layers"`                // tuned block matrices, in depth order
	Vectors    []VectorPlan `json:"vectors"`               // tuned block vectors, in depth order
	Head       HeadPlan     `json:"head"`                  // the classifier head (always trained)
	ClassToken *TensorPlan  `json:"class_token,omitempty"` // trained whole (absent for "linear")
	Extra      []TensorPlan `json:"extra,omitempty"`       // "full": embeddings and final norm

	Totals Totals `json:"totals"`
	Budget int64  `json:"budget"`
	// Overview repeats Summary() in the file, for readers of plan.json.
	Overview Summary `json:"summary"`

	// Injected lists what Apply added or made trainable, by name. Only the copy of the
	// plan that Apply stores in the injected model's metadata has it.
	Injected []Injected `json:"injected,omitempty"`
}

// Injected records one initializer of an injected model that Apply added or made
// trainable, and which tuner made it for what, so that training, merging and export
// need not guess names.
type Injected struct {
	Init string `json:"init"` // its name in the injected model
	// Of is the target: a plan layer or vector name ("blocks.3.fc1",
	// "blocks.3.q.bias"), "head", or a TensorPlan name ("class_token", "pos_embed", …).
	Of        string `json:"of"`
	Tuner     Kind   `json:"tuner"`            // the tuner that made it
	Part      Part   `json:"part"`             // which of the tuner's tensors it is
	Base      string `json:"base,omitempty"`   // the base model's initializer it adds to or replaces ("" for a new head)
	Offset    int    `json:"offset,omitempty"` // whole: where Of starts in Init (entry, or output unit of a matrix)
	Trainable bool   `json:"trainable"`
}

// PlanOptions are the allocation options a plan was made with.
type PlanOptions struct {
	Strategy string  `json:"strategy"`
	Type     string  `json:"type"`
	Rank     int     `json:"rank"`
	Alpha    float64 `json:"alpha"`
	Beta     float64 `json:"beta"`
	Classes  int     `json:"classes"`
	HeadSeed int64   `json:"head_seed"`
	// Scoring is the head the sensitivity scores were taken through (HeadRandom,
	// HeadProbe, HeadZeroMean; empty for plans without scores or from older score
	// files, which used HeadRandom); ScoringHeads the number of random heads averaged.
	Scoring      string `json:"scoring,omitempty"`
	ScoringHeads int    `json:"scoring_heads,omitempty"`
	// LoRAScaling multiplies the LoRA branch (B·A·x). The SPT reference uses none (1).
	LoRAScaling float64 `json:"lora_scaling"`
}

// LayerPlan is one tuned block matrix.
type LayerPlan struct {
	Name   string `json:"name"` // "blocks.3.fc1"
	Block  int    `json:"block"`
	Kind   string `json:"kind"`   // q, k, v, proj, fc1, fc2
	Weight string `json:"weight"` // the stored initializer
	Layout string `json:"layout"` // "[in,out]" or "[out,in]": how Weight is stored
	In     int    `json:"in"`
	Out    int    `json:"out"`
	Fused  bool   `json:"fused,omitempty"`
	Offset int    `json:"offset,omitempty"` // first output unit within a fused Weight
	Mode   string `json:"mode"`             // lora, adapter, dora, sparse, full
	Rank   int    `json:"rank,omitempty"`   // lora, adapter, dora
	Params int64  `json:"params"`
	// Sensitive is the number of the layer's entries among the top Tau (spt only).
	Sensitive int64 `json:"sensitive,omitempty"`
	// Indices are the sparse entries: flat indices into Weight as stored, ascending.
	// With mode sparse they are the layer's trainable entries; with a structured mode
	// they are extra sparse entries trained beside the module (spt only, when the budget
	// exceeds every structured module and whole vector together), and Params counts both.
	Indices []int64 `json:"indices,omitempty"`
}

// VectorPlan is one tuned block vector (a bias, a q/k/v part of a fused bias, or a
// LayerNorm scale or shift).
type VectorPlan struct {
	Name      string  `json:"name"` // "blocks.3.norm1.scale", "blocks.3.q.bias"
	Block     int     `json:"block"`
	Init      string  `json:"init"`   // the stored initializer
	Offset    int     `json:"offset"` // first entry within Init
	Size      int     `json:"size"`
	Mode      string  `json:"mode"` // full or sparse
	Params    int64   `json:"params"`
	Sensitive int64   `json:"sensitive,omitempty"`
	Indices   []int64 `json:"indices,omitempty"` // flat indices into Init, ascending
}

// HeadPlan is the classifier head: a new one for Classes classes (or the model's own
// when it has Classes outputs and Apply is asked to keep it).
type HeadPlan struct {
	In      int    `json:"in"`
	Classes int    `json:"classes"`
	Params  int64  `json:"params"` // (in+1)·classes
	Seed    int64  `json:"seed"`
	Weight  string `json:"weight"` // the base model's head initializers
	Bias    string `json:"bias,omitempty"`
	// Init says how a new head starts: HeadInit(in, classes, Seed) when empty, else
	// the scoring head's name (HeadProbe, HeadZeroMean) and its Values.
	Init   string      `json:"init,omitempty"`
	Values *HeadValues `json:"values,omitempty"`
}

// TensorPlan is a non-block tensor trained whole: Name is its role (class_token,
// patch_embed.weight, patch_embed.bias, pos_embed, norm.scale, norm.shift), Init the
// initializer that holds it in the base model.
type TensorPlan struct {
	Name   string `json:"name"`
	Init   string `json:"init"`
	Params int64  `json:"params"`
}

// Totals count the plan's trainable parameters by kind.
type Totals struct {
	Structured    int64 `json:"structured"`      // LoRA / Adapter / DoRA modules
	SparseEntries int64 `json:"sparse_entries"`  // sparse entries of matrices and vectors
	Vectors       int64 `json:"vectors"`         // whole vectors
	Dense         int64 `json:"dense,omitempty"` // whole matrices and embeddings ("full")
	Head          int64 `json:"head"`
	ClassToken    int64 `json:"class_token"`
	Total         int64 `json:"total"`
}

// Summary is what `sptctl allocate --json` prints.
type Summary struct {
	Budget        int64    `json:"budget"`
	Trainable     int64    `json:"trainable"`
	Structured    []string `json:"structured"` // layers with a structured module
	SparseEntries int64    `json:"sparse_entries"`
	Vectors       []string `json:"vectors"` // vectors trained whole
}

// Summary returns the plan's summary.
func (p *Plan) Summary() Summary {
	s := Summary{Budget: p.Budget, Trainable: p.Totals.Total, SparseEntries: p.Totals.SparseEntries,
		Structured: []string{}, Vectors: []string{}}
	for _, l := range p.Layers {
		if isModule(l.Mode) {
			s.Structured = append(s.Structured, l.Name)
		}
	}
	for _, v := range p.Vectors {
		if v.Mode == ModeFull {
			s.Vectors = append(s.Vectors, v.Name)
		}
	}
	return s
}

// Check refuses a plan made for another model: fingerprint is the model's
// onnxio.Fingerprint.
func (p *Plan) Check(fingerprint string) error {
	if p.BaseFingerprint != fingerprint {
		return fmt.Errorf("plan was made for another model (plan: %s, this model: %s); run allocate on this model", onnxio.ShortFingerprint(p.BaseFingerprint), onnxio.ShortFingerprint(fingerprint))
	}
	return nil
}

// Recount recomputes the totals and the summary from the plan's entries, after they
// were edited by hand.
func (p *Plan) Recount() { p.recount() }

// recount recomputes the totals and the summary from the entries.
func (p *Plan) recount() {
	t := Totals{}
	for _, l := range p.Layers {
		switch {
		case isModule(l.Mode):
			t.Structured += l.Params - int64(len(l.Indices))
			t.SparseEntries += int64(len(l.Indices))
		case l.Mode == ModeSparse:
			t.SparseEntries += l.Params
		case l.Mode == ModeFull:
			t.Dense += l.Params
		}
	}
	for _, v := range p.Vectors {
		if v.Mode == ModeSparse {
			t.SparseEntries += v.Params
		} else {
			t.Vectors += v.Params
		}
	}
	for _, e := range p.Extra {
		t.Dense += e.Params
	}
	t.Head = p.Head.Params
	if p.ClassToken != nil {
		t.ClassToken = p.ClassToken.Params
	}
	t.Total = t.Structured + t.SparseEntries + t.Vectors + t.Dense + t.Head + t.ClassToken
	p.Totals = t
	p.Overview = p.Summary()
}

// validate checks a plan's internal consistency (not against a model).
func (p *Plan) validate() error {
	if p.Version != PlanVersion {
		return fmt.Errorf("plan version %d is not supported (this sptctl reads versions 1 and %d)", p.Version, PlanVersion)
	}
	if p.BaseFingerprint == "" {
		return errors.New("plan has no base_fingerprint")
	}
	if err := p.checkSizes(); err != nil {
		return err
	}
	for i := range p.Layers {
		l := &p.Layers[i]
		tu, ok := TunerOf(layerKind(l.Mode))
		if !ok || l.Mode == string(KindWhole) || l.Mode == string(KindHead) {
			return fmt.Errorf("plan layer %s: unknown mode %q", l.Name, l.Mode)
		}
		want := tu.Params(Target{Layer: l})
		if isModule(l.Mode) {
			want += int64(len(l.Indices))
			if l.Rank <= 0 {
				return fmt.Errorf("plan layer %s: rank %d", l.Name, l.Rank)
			}
		}
		if l.Params != want {
			return fmt.Errorf("plan layer %s: %d params, want %d for mode %s", l.Name, l.Params, want, l.Mode)
		}
		if l.Mode == ModeSparse && len(l.Indices) == 0 {
			return fmt.Errorf("plan layer %s: sparse without indices", l.Name)
		}
		if l.Mode == ModeFull && len(l.Indices) > 0 {
			return fmt.Errorf("plan layer %s: indices with mode full", l.Name)
		}
		if err := ascending(l.Indices); err != nil {
			return fmt.Errorf("plan layer %s: %w", l.Name, err)
		}
	}
	for _, v := range p.Vectors {
		var want int64
		switch v.Mode {
		case ModeFull:
			want = int64(v.Size)
		case ModeSparse:
			want = int64(len(v.Indices))
		default:
			return fmt.Errorf("plan vector %s: unknown mode %q", v.Name, v.Mode)
		}
		if v.Params != want {
			return fmt.Errorf("plan vector %s: %d params, want %d for mode %s", v.Name, v.Params, want, v.Mode)
		}
		if v.Mode == ModeSparse && len(v.Indices) == 0 {
			return fmt.Errorf("plan vector %s: sparse without indices", v.Name)
		}
		if v.Mode == ModeFull && len(v.Indices) > 0 {
			return fmt.Errorf("plan vector %s: indices with mode full", v.Name)
		}
		if err := ascending(v.Indices); err != nil {
			return fmt.Errorf("plan vector %s: %w", v.Name, err)
		}
	}
	if p.Head.Classes <= 0 || p.Head.Params != int64(p.Head.In+1)*int64(p.Head.Classes) {
		return fmt.Errorf("plan head: %d params for %d classes of %d inputs", p.Head.Params, p.Head.Classes, p.Head.In)
	}
	if v := p.Head.Values; v != nil {
		if err := v.check(p.Head.In, p.Head.Classes); err != nil {
			return err
		}
	}
	stated := p.Totals
	p2 := *p
	p2.recount()
	if p2.Totals != stated {
		return fmt.Errorf("plan totals %+v do not match its entries (%+v)", stated, p2.Totals)
	}
	return nil
}

func ascending(xs []int64) error {
	for i, x := range xs {
		if x < 0 || (i > 0 && x <= xs[i-1]) {
			return fmt.Errorf("indices not ascending and non-negative at position %d", i)
		}
	}
	return nil
}

// SavePlan writes p to path as JSON, atomically.
func SavePlan(path string, p *Plan) error {
	b, err := json.MarshalIndent(p, "", " ")
	if err != nil {
		return fmt.Errorf("save plan %s: %w", path, err)
	}
	b = append(b, '\n')
	if err := onnxio.WriteFileAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err }); err != nil {
		return fmt.Errorf("save plan %s: %w", path, err)
	}
	return nil
}

// LoadPlan reads a plan written by SavePlan and checks that it is consistent.
func LoadPlan(path string) (*Plan, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load plan: %w", err)
	}
	p, err := DecodePlan(b)
	if err != nil {
		return nil, fmt.Errorf("load plan %s: %w", path, err)
	}
	return p, nil
}

// DecodePlan parses and checks a plan's JSON (plan.json, or meta.KeyPlan).
func DecodePlan(b []byte) (*Plan, error) {
	var probe struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("not a plan (JSON: %w)", err)
	}
	if probe.Version == nil {
		return nil, errors.New("not a plan (no version field)")
	}
	if *probe.Version == 1 {
		return decodeV1(b)
	}
	p := &Plan{}
	if err := json.Unmarshal(b, p); err != nil {
		return nil, fmt.Errorf("not a plan: %w", err)
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// decodeV1 reads a version 1 plan: the same entries, and injected records that name a
// role instead of a tuner and part. The roles translate one to one.
func decodeV1(b []byte) (*Plan, error) {
	var old struct {
		Injected []struct {
			Init      string `json:"init"`
			Of        string `json:"of"`
			Role      string `json:"role"`
			Base      string `json:"base"`
			Offset    int    `json:"offset"`
			Trainable bool   `json:"trainable"`
		} `json:"injected"`
	}
	p := &Plan{}
	if err := json.Unmarshal(b, p); err != nil {
		return nil, fmt.Errorf("not a plan: %w", err)
	}
	if err := json.Unmarshal(b, &old); err != nil {
		return nil, fmt.Errorf("not a plan: %w", err)
	}
	roles := map[string]struct {
		k Kind
		p Part
	}{
		"lora_A": {KindLoRA, PartA}, "lora_B": {KindLoRA, PartB},
		"adapter_down": {KindAdapter, PartDown}, "adapter_down_bias": {KindAdapter, PartDownBias},
		"adapter_up": {KindAdapter, PartUp}, "adapter_up_bias": {KindAdapter, PartUpBias},
		"sparse_values": {KindSparse, PartValues}, "sparse_indices": {KindSparse, PartIndices},
		"whole": {KindWhole, PartWhole},
	}
	p.Injected = nil
	for _, r := range old.Injected {
		kp, ok := roles[r.Role]
		if !ok {
			return nil, fmt.Errorf("plan version 1: record %s has unknown role %q", r.Init, r.Role)
		}
		in := Injected{Init: r.Init, Of: r.Of, Tuner: kp.k, Part: kp.p, Base: r.Base, Offset: r.Offset, Trainable: r.Trainable}
		if r.Of == "head.weight" || r.Of == "head.bias" {
			in.Of, in.Tuner, in.Part = HeadName, KindHead, Part(strings.TrimPrefix(r.Of, "head."))
		}
		p.Injected = append(p.Injected, in)
	}
	p.Version = PlanVersion
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p, nil
}

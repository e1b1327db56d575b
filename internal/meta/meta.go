// Package meta reads and writes the records sptctl keeps in a model's metadata_props:
// which initializers are trainable, the SPT plan the model was injected with, the
// fingerprint of the base model, and the image preprocessing the model expects. Every
// stage writes and reads them here, so a model carries what later stages need.
package meta

import (
	"encoding/json"
	"fmt"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Keys of sptctl's metadata_props entries.
const (
	KeyTrainable       = "sptctl.trainable"        // JSON list of initializer names
	KeyPlan            = "sptctl.plan"             // JSON of the plan (inject.Plan)
	KeyBaseFingerprint = "sptctl.base_fingerprint" // onnxio.Fingerprint of the base model
	KeyPreprocess      = "sptctl.preprocess"       // JSON Preprocess
	KeyHeadSeed        = "sptctl.head_seed"        // seed of the task head, decimal
	KeyClasses         = "sptctl.classes"          // number of task classes, decimal
	// KeyBasePath is the path of the base model a model was injected from, as inject
	// was given it made absolute (export finds the base there unless told otherwise).
	KeyBasePath = "sptctl.base_path"
	// KeyMerged marks a model written by `sptctl export --merge`: JSON MergedNote.
	KeyMerged = "sptctl.merged"
	// KeyPrecision is the precision `sptctl train` ran matrix products in: fp32 or
	// bf16 (the stored weights are float32 either way).
	KeyPrecision = "sptctl.precision"
)

// Preprocess is how images are turned into the model's input.
type Preprocess struct {
	Channels int       `json:"channels"`
	Height   int       `json:"height"`
	Width    int       `json:"width"`
	Mean     []float32 `json:"mean"`
	Std      []float32 `json:"std"`
}

// MergedNote is what a merged export records under KeyMerged.
type MergedNote struct {
	BaseFingerprint string   `json:"base_fingerprint"` // the base model the task was tuned from
	Plan            any      `json:"plan"`             // the plan's summary (inject.Summary)
	Adapters        []string `json:"adapters"`         // layers whose Adapter stays as nodes
	Note            string   `json:"note"`
}

// Get decodes the JSON stored under key into v. It reports false if the key is absent.
func Get(m *onnxpb.ModelProto, key string, v any) (bool, error) {
	s, ok := onnxio.Metadata(m, key)
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return true, fmt.Errorf("metadata %s: %w", key, err)
	}
	return true, nil
}

// Set stores v as JSON under key.
func Set(m *onnxpb.ModelProto, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("metadata %s: %w", key, err)
	}
	onnxio.SetMetadata(m, key, string(b))
	return nil
}

// Trainable returns the initializer names the model marks trainable (nil if none).
func Trainable(m *onnxpb.ModelProto) ([]string, error) {
	var names []string
	_, err := Get(m, KeyTrainable, &names)
	return names, err
}

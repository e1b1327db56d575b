package export

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
)

// CheckSidecar checks, before a sidecar model is run, that the shared base.data beside
// it holds the weights of the base the model was trained from: base.json must name that
// base (md is the model's metadata, md[meta.KeyBaseFingerprint] its base), and base.data
// must have the size and SHA-256 base.json records. Without it a base.data of another
// base model (same names and shapes) runs without an error and gives wrong answers.
// A model that is not in a sidecar folder (no base.json beside it) or that records no
// base passes. Hashing base.data reads it once (about a third of a second for
// vit_b_16's 330 MB).
func CheckSidecar(modelPath string, md map[string]string) error {
	base, ok := md[meta.KeyBaseFingerprint]
	if !ok {
		return nil
	}
	dir := filepath.Dir(modelPath)
	jsonPath := filepath.Join(dir, BaseJSON)
	b, err := os.ReadFile(jsonPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}
	var info BaseInfo
	if err := json.Unmarshal(b, &info); err != nil || info.Format != BaseFormat {
		return fmt.Errorf("sidecar: %s is not a %s description (%v)", jsonPath, BaseFormat, err)
	}
	if info.Fingerprint != base {
		return fmt.Errorf("sidecar: %s describes another base model (fingerprint %s; %s was trained from %s)", jsonPath, onnxio.ShortFingerprint(info.Fingerprint), filepath.Base(modelPath), onnxio.ShortFingerprint(base))
	}
	dataPath := filepath.Join(dir, BaseData)
	f, err := os.Open(dataPath)
	if err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("sidecar: %w", err)
	}
	if st.Size() != info.Size {
		return fmt.Errorf("sidecar: %s is %d bytes, %s says %d: it holds another base model's weights or was changed", dataPath, st.Size(), BaseJSON, info.Size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("sidecar: read %s: %w", dataPath, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != info.SHA256 {
		return fmt.Errorf("sidecar: %s does not hold the weights %s records (SHA-256 %.12s…, want %.12s…): it holds another base model's weights or was changed", dataPath, BaseJSON, got, info.SHA256)
	}
	return nil
}

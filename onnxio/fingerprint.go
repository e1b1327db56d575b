package onnxio

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Fingerprint is a hash of a model's initializers (names, types, shapes and values, in
// name order), written as "sha256:<hex>". Two models with the same weights have the
// same fingerprint whatever else differs, so it identifies the base model a plan or a
// score file was made for.
func Fingerprint(g *onnxpb.GraphProto) (string, error) {
	inits := append([]*onnxpb.TensorProto(nil), g.GetInitializer()...)
	sort.Slice(inits, func(i, j int) bool { return inits[i].GetName() < inits[j].GetName() })
	h := sha256.New()
	var num [8]byte
	put := func(x uint64) {
		binary.LittleEndian.PutUint64(num[:], x)
		h.Write(num[:])
	}
	for _, t := range inits {
		data, err := Bytes(t)
		if err != nil {
			return "", fmt.Errorf("fingerprint: %w", err)
		}
		put(uint64(len(t.GetName())))
		h.Write([]byte(t.GetName()))
		put(uint64(t.GetDataType()))
		put(uint64(len(t.Dims)))
		for _, d := range t.Dims {
			put(uint64(d))
		}
		put(uint64(len(data)))
		h.Write(data)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// ShortFingerprint is a fingerprint cut for messages: the "sha256:" prefix and the
// first 16 hex digits, then "…".
func ShortFingerprint(fp string) string {
	if len(fp) > 23 {
		return fp[:23] + "…"
	}
	return fp
}

package main

import (
	"path/filepath"

	"github.com/sptctl/sptctl/onnxio"
)

// modelInputs are the files a model at path is read from: the model, and the external
// data files its initializers name (an output must not overwrite those either). A model
// that cannot be read is left for the command to report.
func modelInputs(what, path string) []pathArg {
	if path == "" {
		return nil
	}
	ins := []pathArg{{what, path}}
	locs, err := externalDataFiles(path)
	if err != nil {
		return ins
	}
	for _, l := range locs {
		ins = append(ins, pathArg{what + "'s external data", filepath.Join(filepath.Dir(path), l)})
	}
	return ins
}

// externalDataFiles lists the distinct external-data locations of a model file's graph
// initializers (onnxio.PeekExternalData: tensor data is skipped, nothing decoded).
func externalDataFiles(path string) ([]string, error) { return onnxio.PeekExternalData(path) }

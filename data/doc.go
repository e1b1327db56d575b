// Package data reads labelled image sets (VTAB-1k list files, ImageFolder trees, IDX
// files), turns images into normalised model inputs, and carves few-shot tasks out of
// IDX sets.
//
// A data folder is opened with [Open], which detects its layout:
//
//   - VTAB-1k lists ([LayoutVTAB]): list files such as train800.txt, val200.txt,
//     train800val200.txt and test.txt, each line "relative/path.png LABEL". Any
//     trainN.txt, valN.txt, trainNvalM.txt (and train.txt, val.txt, trainval.txt) is a
//     split named after the file; the aliases "train", "val" and "trainval" name the
//     only such split of their kind.
//   - ImageFolder ([LayoutImageFolder]): train/<class>/*.{png,jpg,jpeg}, val/…, test/…;
//     class indices follow the sorted class folder names of the train split.
//   - IDX ([LayoutIDX]): MNIST-style train-images-idx3-ubyte, train-labels-idx1-ubyte,
//     t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally gzipped; splits
//     "train" and "test".
//
// The class count comes from the task, never from the largest label alone: the class
// folders of an ImageFolder tree; the num_classes of a fewshot.json manifest (written by
// [FewShot], or by hand) when the folder has one; otherwise, for VTAB-1k lists and IDX
// files, the largest label of the training splits (train…, val…) plus one. Open refuses,
// naming the file and line, any label of any split at or above it, and training labels
// that leave more than half of the classes without an example (the mark of a typo such
// as 77 in a 5-class list; a manifest states such a count when it is real). Image
// files over 16384 pixels a side or 64 Mpx in all are refused from their header, before
// they are decoded.
//
// [Tensor] turns one image into a normalised C×H×W float32 input, [Loader] prepares
// batches of them on worker goroutines in a deterministic order, and [FewShot] writes a
// VTAB-1k-style task folder drawn from an IDX set.
package data

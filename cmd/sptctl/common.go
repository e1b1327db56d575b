package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sptctl/sptctl/data"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// loadViT loads a model and finds its transformer structure.
func loadViT(path string) (*onnxpb.ModelProto, *surgery.Graph, *surgery.ViT, error) {
	m, err := onnxio.Load(path)
	if err != nil {
		return nil, nil, nil, err
	}
	g := surgery.New(m)
	v, err := surgery.FindViT(g)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, g, v, nil
}

// loadModel loads a model (base, injected, trained or exported) and finds its image
// input and class count.
func loadModel(path string) (*onnxpb.ModelProto, surgery.Image, int, error) {
	m, err := onnxio.Load(path)
	if err != nil {
		return nil, surgery.Image{}, 0, err
	}
	g := surgery.New(m)
	in, err := surgery.ImageInput(g)
	if err != nil {
		return nil, surgery.Image{}, 0, fmt.Errorf("%s: %w", path, err)
	}
	return m, in, surgery.Classes(g), nil
}

// preprocessFor is the preprocessing recorded in m, or the default for its input.
func preprocessFor(m *onnxpb.ModelProto, v surgery.Image, log io.Writer) (meta.Preprocess, error) {
	var p meta.Preprocess
	if err := checkImageSize(v.Channels, v.Height, v.Width); err != nil {
		return p, err
	}
	ok, err := meta.Get(m, meta.KeyPreprocess, &p)
	if err != nil {
		return p, err
	}
	if ok {
		if err := checkImageSize(int64(p.Channels), int64(p.Height), int64(p.Width)); err != nil {
			return p, fmt.Errorf("metadata %s: %w", meta.KeyPreprocess, err)
		}
		return p, data.CheckPreprocess(p)
	}
	if p, err = data.InputPreprocess(v.Channels, v.Height, v.Width); err != nil {
		return p, err
	}
	fmt.Fprintf(log, "preprocessing: %d×%d×%d, mean %v, std %v (default for the model's input)\n", p.Channels, p.Height, p.Width, p.Mean, p.Std)
	return p, nil
}

// openSplit opens a data folder's split, checking its labels fit classes.
func openSplit(dir, name string, classes int) (*data.Dataset, *data.Split, error) {
	ds, err := data.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	s, err := ds.Split(name)
	if err != nil {
		return nil, nil, err
	}
	if classes > 0 && ds.NumClasses() > classes {
		return nil, nil, fmt.Errorf("%s has %d classes, but the model's head has %d outputs", dir, ds.NumClasses(), classes)
	}
	return ds, s, nil
}

// interruptible returns a context cancelled by Ctrl-C or SIGTERM.
func interruptible() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// progress draws a one-line progress bar on a terminal, and a line every 10% elsewhere.
type progress struct {
	w       io.Writer
	what    string
	tty     bool
	start   time.Time
	lastPct int
}

func newProgress(w io.Writer, what string) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, what: what, tty: tty, start: time.Now(), lastPct: -1}
}

// update shows done of total, with extra text after the bar.
func (p *progress) update(done, total int, extra string) {
	if total <= 0 {
		return
	}
	pct := 100 * done / total
	elapsed := time.Since(p.start)
	eta := ""
	if done > 0 && done < total {
		eta = " eta " + (elapsed * time.Duration(total-done) / time.Duration(done)).Round(time.Second).String()
	}
	if p.tty {
		const width = 24
		fill := width * done / total
		fmt.Fprintf(p.w, "\r%s [%s%s] %d/%d %s%s\033[K", p.what, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), done, total, extra, eta)
		if done == total {
			fmt.Fprintln(p.w)
		}
		return
	}
	if pct/10 != p.lastPct/10 || done == total {
		p.lastPct = pct
		fmt.Fprintf(p.w, "%s %3d%% (%d/%d) %s%s\n", p.what, pct, done, total, extra, eta)
	}
}

func (p *progress) elapsed() float64 { return time.Since(p.start).Seconds() }

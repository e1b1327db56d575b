package engine

import (
	"errors"
	"strings"
	"testing"
)

// cpuinfo texts: two processors, the flags lines as the kernel writes them.
const (
	cpuWithBF16 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 ht\n\n" +
		"processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 ht\n"
	cpuWithAMX  = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"
	cpuWithout  = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni ht\n"
	cpuNoFlags  = "processor\t: 0\nmodel name\t: something\n"
	bf16Feature = "Features\t: fp asimd bf16\n" // Arm's name: not a flag libtorch 1.13's oneDNN path uses here
)

func TestChoosePrecision(t *testing.T) {
	cases := []struct {
		flag, cpu string
		want      Precision
		err       error  // errors.Is target, or nil
		note      string // substring of the note (or of the error)
	}{
		{"auto", cpuWithBF16, BF16, nil, "avx512_bf16"},
		{"", cpuWithBF16, BF16, nil, "auto"},
		{"auto", cpuWithAMX, BF16, nil, "amx_bf16"},
		{"auto", cpuWithout, FP32, nil, "fp32 (auto: the CPU has neither"},
		{"auto", cpuNoFlags, FP32, nil, "fp32 (auto"},
		{"auto", bf16Feature, FP32, nil, "fp32 (auto"},
		{"auto", "", FP32, nil, "fp32 (auto"},
		{"bf16", cpuWithBF16, BF16, nil, "bf16 (asked"},
		{"bf16", cpuWithout, FP32, ErrNoBF16, "--precision bf16: this CPU has no bfloat16"},
		{"fp32", cpuWithBF16, FP32, nil, "fp32 (asked)"},
		{"fp16", cpuWithBF16, FP32, errors.New(""), `--precision "fp16": want auto, bf16 or fp32`},
	}
	for _, c := range cases {
		got, err := ChoosePrecision(c.flag, []byte(c.cpu))
		switch {
		case c.err != nil:
			if err == nil {
				t.Errorf("%q on %.30q: no error, got %v", c.flag, c.cpu, got.Precision)
				continue
			}
			if errors.Is(c.err, ErrNoBF16) && !errors.Is(err, ErrNoBF16) {
				t.Errorf("%q: error %v does not wrap ErrNoBF16", c.flag, err)
			}
			if !strings.Contains(err.Error(), c.note) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%q: error %q, want one line containing %q", c.flag, err, c.note)
			}
		case err != nil:
			t.Errorf("%q on %.30q: %v", c.flag, c.cpu, err)
		case got.Precision != c.want || !strings.Contains(got.Note, c.note):
			t.Errorf("%q on %.30q: %v %q, want %v and a note with %q", c.flag, c.cpu, got.Precision, got.Note, c.want, c.note)
		}
	}
}

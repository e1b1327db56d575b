#!/usr/bin/env bash
# ONNX load/save benchmark: onnxio (Go) against Python's onnx package.
#
#   bench/io.sh [MODEL]          (RUNS=5 by default; set RUNS=N to change)
#
# MODEL defaults to bench/cache/vit_b_16.onnx, made by bench/make_vit_b16.py when
# missing. Every case is its own process under /usr/bin/time (Debian package `time`),
# which gives its peak RSS; the cases are interleaved RUNS times after one warm-up
# round (the input is in the page cache for all of them). Times are medians, peak RSS
# the largest seen. CPU is user + sys time of the process, minor faults its page faults
# (4 KiB pages touched for the first time). The load / save times are measured inside
# the process around those calls only; "process wall" is the whole command (start-up
# and imports too).
# Prints a markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:-bench/cache/vit_b_16.onnx}
RUNS=${RUNS:-5}
PY=/usr/bin/python3
TIME=/usr/bin/time
[[ -x $TIME ]] || { echo "io.sh: $TIME missing (apt-get install time)" >&2; exit 1; }
[[ -f $MODEL ]] || $PY bench/make_vit_b16.py "$MODEL" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/iobench" ./bench/iobench
OUT=$tmp/out.onnx

PYLOAD='import json, sys, time
import onnx
t = time.perf_counter(); m = onnx.load(sys.argv[1]); t1 = time.perf_counter()
r = {"load_s": t1 - t}
if len(sys.argv) > 2:
    onnx.save(m, sys.argv[2]); r["save_s"] = time.perf_counter() - t1
print(json.dumps(r))'

case_cmd() {
	case $1 in
	go-load) echo "$tmp/iobench $MODEL" ;;
	go-save) echo "$tmp/iobench -save $OUT $MODEL" ;;
	go-plain) echo "$tmp/iobench -save $OUT -plain $MODEL" ;;
	go-encode) echo "$tmp/iobench -save $OUT -encode $MODEL" ;;
	py-load) echo "$PY -c \"\$PYLOAD\" $MODEL" ;;
	py-save) echo "$PY -c \"\$PYLOAD\" $MODEL $OUT" ;;
	esac
}
CASES="go-load py-load go-save py-save go-plain go-encode"

: >"$tmp/runs"
for round in $(seq 0 "$RUNS"); do
	for c in $CASES; do
		rm -f "$OUT"
		cmd=$(case_cmd "$c")
		eval "$TIME -f '%e %M %U %S %R' -o $tmp/time $cmd" >"$tmp/json"
		same=-
		if [[ -f $OUT ]]; then cmp -s "$MODEL" "$OUT" && same=yes || same=no; fi
		# the warm-up round (0) is not recorded
		[[ $round == 0 ]] || echo "$c $(cat "$tmp/time") $same $(cat "$tmp/json")" >>"$tmp/runs"
	done
done

$PY - "$MODEL" "$tmp/runs" "$RUNS" <<'PYEOF'
import json, os, statistics, sys
model, runs_file, runs = sys.argv[1], sys.argv[2], sys.argv[3]
size = os.path.getsize(model)
rows = {}
for line in open(runs_file):
    c, wall, rss, usr, sys_, flt, same, js = line.split(" ", 7)
    r = json.loads(js)
    d = rows.setdefault(c, {"wall": [], "rss": [], "same": set(), "load": [], "save": [], "cpu": [], "sys": [], "flt": []})
    d["wall"].append(float(wall)); d["rss"].append(int(rss) * 1024); d["same"].add(same)
    d["cpu"].append(float(usr) + float(sys_)); d["sys"].append(float(sys_)); d["flt"].append(int(flt))
    d["load"].append(r["load_s"])
    if "save_s" in r:
        d["save"].append(r["save_s"])
med = lambda v: statistics.median(v) if v else None
def s(v): return "" if v is None else f"{v:.2f}"
names = {
    "go-load": "Go `onnxio.Load`",
    "py-load": "Python `onnx.load`",
    "go-save": "Go `onnxio.Load` + `onnxio.Save`",
    "py-save": "Python `onnx.load` + `onnx.save`",
    "go-plain": "Go `onnxio.Load` + `EncodeTo` into the file (no fsync/rename, like Python)",
    "go-encode": "Go `onnxio.Load` + `Encode` + `os.WriteFile` (whole encoding in memory)",
}
print(f"`{model}`: {size} bytes ({size/2**20:.0f} MiB); {runs} runs per case, medians; "
      f"peak RSS is the largest of the runs.\n")
print("| case | load s | save s | process wall s | CPU s (of it sys) | minor faults | peak RSS MiB | peak / file | output identical |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
for c in ["go-load", "py-load", "go-save", "py-save", "go-plain", "go-encode"]:
    d = rows[c]
    rss = max(d["rss"])
    print(f"| {names[c]} | {s(med(d['load']))} | {s(med(d['save']))} | {s(med(d['wall']))} | "
          f"{s(med(d['cpu']))} ({s(med(d['sys']))}) | {med(d['flt'])/1000:.0f} k | "
          f"{rss/2**20:.0f} | {rss/size:.2f}× | {'/'.join(sorted(d['same']))} |")
def ratio(a, b, k, f=med):
    return f(rows[a][k]) / f(rows[b][k])
print()
print("| Go / Python | load | save | process wall | peak RSS |")
print("| --- | ---: | ---: | ---: | ---: |")
print(f"| load only (`onnxio.Load` / `onnx.load`) | {ratio('go-load','py-load','load'):.2f} | | "
      f"{ratio('go-load','py-load','wall'):.2f} | {ratio('go-load','py-load','rss',max):.2f} |")
print(f"| load + save (`onnxio.Save` / `onnx.save`) | {ratio('go-save','py-save','load'):.2f} | "
      f"{ratio('go-save','py-save','save'):.2f} | {ratio('go-save','py-save','wall'):.2f} | "
      f"{ratio('go-save','py-save','rss',max):.2f} |")
print(f"| load + `EncodeTo` without fsync/rename / `onnx.save` | {ratio('go-plain','py-save','load'):.2f} | "
      f"{ratio('go-plain','py-save','save'):.2f} | {ratio('go-plain','py-save','wall'):.2f} | "
      f"{ratio('go-plain','py-save','rss',max):.2f} |")
PYEOF

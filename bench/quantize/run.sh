#!/usr/bin/env bash
# Quantized deployment (`sptctl export --merge --quantize int8|int4`): accuracy on the
# SPT suite's tasks, file size and ONNX Runtime latency on vit_b_16.
#
#   bench/quantize/run.sh              # writes bench/RESULTS-quantize.md
#
# 1. Accuracy: the four tasks of bench/spt/run.sh (carved by it, CARVE_ONLY=1, into
#    bench/cache/spt/tasks), one SPT-LoRA run each with the suite's settings and seed 0
#    (`sptctl tune ... --quantize int8`, budget = LoRA-qv's trainable count), then
#    `sptctl export --merge --quantize int4` of the same trained model; test top-1 of the
#    fp32 merged, int8 and int4 models with `sptctl eval` (ONNX Runtime). Runs go to
#    bench/cache/quantize/runs/TASK (a run with a report.json is skipped on a rerun).
# 2. Size and speed: vit_b_16 with random weights (bench/make_vit_b16.py), a LoRA-qv
#    rank-8 plan injected (untrained: speed and size do not depend on the values) and
#    exported merged in fp32, int8 and int4 by sptctl; the two 8-bit operator forms
#    export/quantize can write and MatMulNBits' two accuracy levels are timed beside
#    them (bench/quantize `forms`); latency at batch 1 and 8 with ONNX Runtime (one
#    thread per core: 2 here), models in turn each round, median of RUNS.
#
# Knobs (environment): TASKS, RUNS, VIT, SKIP_TASKS=1, SKIP_VIT=1, WORKERS, REPORT_ONLY=1
# (rewrite the results file from the cached runs and measurements).
# Run under the heavy lock on the shared machine: flock /tmp/sptctl-heavy.lock bench/quantize/run.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
MODEL=models/vit-fmnist.onnx
TASKS=${TASKS:-"fmnist-new rotation digits inverted"}
RUNS=${RUNS:-8}
VIT=${VIT:-bench/cache/vit_b_16.onnx}
CACHE=bench/cache/quantize
OUTMD=${OUTMD:-bench/RESULTS-quantize.md}
# the SPT suite's settings (bench/spt/run.sh)
EPOCHS=10 BATCH=64 LR=5e-3 WARMUP=1 WD=1e-4 DROPOUT=0.1 RANK=8 SEED=0
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
export SPTCTL_ORT_LIB=${SPTCTL_ORT_LIB:-$PWD/third_party/onnxruntime/libonnxruntime.so.1}
die() { echo "run.sh: $*" >&2; exit 1; }
mkdir -p "$CACHE/runs" "$CACHE/vit"
# private builds of this tree
CGO_ENABLED=1 go build -o "$CACHE/sptctl" ./cmd/sptctl || die "build failed"
CGO_ENABLED=1 go build -o "$CACHE/qbench" ./bench/quantize || die "build failed"
S=$CACHE/sptctl
start=$(date +%s)

# ---------- 1. accuracy on the SPT tasks ----------
if [[ -z ${SKIP_TASKS:-} && -z ${REPORT_ONLY:-} ]]; then
	CARVE_ONLY=1 TASKS="$TASKS" SPTCTL=$S bench/spt/run.sh >&2 || die "carving the tasks failed"
	T=bench/cache/spt/tasks
	classes() { awk '{print $2}' "$T/$1/train800val200.txt" | sort -un | wc -l; }
	one() { # CPU TASK
		local cpu=$1 t=$2 out=$CACHE/runs/$2 qv f
		if [[ ! -f $out/report.json ]]; then
			f=$(mktemp)
			qv=$("$S" allocate --model "$MODEL" --classes "$(classes "$t")" --strategy lora-qv --type lora --rank $RANK --out "$f" --json 2>/dev/null | jq -r .trainable)
			rm -f "$f"
			[[ $qv =~ ^[0-9]+$ ]] || { echo "allocate lora-qv failed for $t" >&2; return 1; }
			mkdir -p "$out"
			taskset -c "$cpu" "$S" tune --model "$MODEL" --data "$T/$t" --out "$out" --json \
				--train-split trainval --val-split "" --test-split test \
				--epochs $EPOCHS --batch-size $BATCH --lr $LR --weight-decay $WD --warmup $WARMUP \
				--dropout $DROPOUT --seed $SEED --strategy spt --type lora --rank $RANK --budget "$qv" \
				--quantize int8 >"$out/stdout.json" 2>"$out/log.txt" || { echo "tune $t failed: $out/log.txt" >&2; return 1; }
		fi
		if [[ ! -f $out/int4.json ]]; then
			taskset -c "$cpu" "$S" export --model "$out/trained.onnx" --merge --quantize int4 --out "$out/merged-int4.onnx" \
				--data "$T/$t" --val-split trainval --json >"$out/int4-export.json" 2>"$out/int4-export.log" &&
				taskset -c "$cpu" "$S" eval --model "$out/merged-int4.onnx" --data "$T/$t" --split test --json >"$out/int4.json.tmp" 2>>"$out/int4-export.log" &&
				mv "$out/int4.json.tmp" "$out/int4.json" || { echo "int4 export/eval of $t failed: $out/int4-export.log" >&2; return 1; }
		fi
		echo "$(date +%H:%M:%S) $t done" >&2
	}
	WORKERS=${WORKERS:-$(nproc)}
	i=0
	pids=()
	for t in $TASKS; do
		one $((i % $(nproc))) "$t" &
		pids+=($!)
		i=$((i + 1))
		if ((${#pids[@]} >= WORKERS)); then wait "${pids[0]}" || die "a task failed"; pids=("${pids[@]:1}"); fi
	done
	for p in "${pids[@]}"; do wait "$p" || die "a task failed"; done
fi

# ---------- 2. vit_b_16: size and latency ----------
V=$CACHE/vit
if [[ -z ${SKIP_VIT:-} && -z ${REPORT_ONLY:-} ]]; then
	[[ -f $VIT ]] || /usr/bin/python3 bench/make_vit_b16.py "$VIT" >&2
	if [[ ! -f $V/merged-int4.onnx ]]; then
		"$S" allocate --model "$VIT" --strategy lora-qv --type lora --rank $RANK --classes 10 --out "$V/plan.json" >&2
		"$S" inject --model "$VIT" --plan "$V/plan.json" --out "$V/tunable.onnx" >&2
		"$S" export --model "$V/tunable.onnx" --base "$VIT" --merge --out "$V/merged.onnx" --samples 1 >&2
		/usr/bin/time -f "%e s %M KB" -o "$V/int8.time" "$S" export --model "$V/tunable.onnx" --base "$VIT" --merge --quantize int8 --out "$V/merged-int8.onnx" --samples 1 --json >"$V/int8-export.json"
		/usr/bin/time -f "%e s %M KB" -o "$V/int4.time" "$S" export --model "$V/tunable.onnx" --base "$VIT" --merge --quantize int4 --out "$V/merged-int4.onnx" --samples 1 --json >"$V/int4-export.json"
		rm -f "$V/tunable.onnx"
	fi
	[[ -f $V/forms/int4-acc0.onnx ]] || { mkdir -p "$V/forms" && "$CACHE/qbench" forms "$V/merged.onnx" "$V/forms"; }
	"$CACHE/qbench" latency -runs "$RUNS" -warmup 2 -batch 1,8 fp32="$V/merged.onnx" int8="$V/merged-int8.onnx" \
		int8_fused="$V/forms/int8-fused.onnx" int4="$V/merged-int4.onnx" int4_acc0="$V/forms/int4-acc0.onnx" >"$V/latency.json"
fi

# what the measurements ran on, kept for a REPORT_ONLY rewrite
if [[ -z ${REPORT_ONLY:-} ]]; then
	echo "$(date -u '+%Y-%m-%d %H:%M UTC') at $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >"$CACHE/run.info"
fi

# ---------- RESULTS-quantize.md ----------
# one decimal, always shown
F1='def f1: (. * 10 | round) as $x | ($x / 10 | tostring) | if test("[.]") then . else . + ".0" end;'
{
	echo "# Quantized deployment: accuracy, size and speed"
	echo
	echo "Written by \`bench/quantize/run.sh\` (do not edit by hand; rerun it). Reproduce with:"
	echo
	echo '```'
	echo "flock /tmp/sptctl-heavy.lock bench/quantize/run.sh"
	echo '```'
	echo
	echo "Run finished $(cat "$CACHE/run.info"); $(nproc) CPU cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1), AVX-512 VNNI: $(grep -q avx512_vnni /proc/cpuinfo && echo yes || echo no)), shared with other work; ONNX Runtime $("$CACHE/qbench" ortversion)."
	echo
	echo "int8: every linear layer (q/k/v, attention output, fc1, fc2, head) int8 per output channel, symmetric; activations quantized per run (DynamicQuantizeLinear + MatMulInteger, which ONNX Runtime fuses). int4: the same layers weight-only 4-bit (com.microsoft MatMulNBits, block 32, asymmetric, accuracy level 4). The patch embedding stays fp32 (0.7% of vit_b_16's weights)."
	if [[ -z ${SKIP_TASKS:-} ]]; then
		echo
		echo "## Accuracy on the SPT suite's tasks"
		echo
		echo "SPT-LoRA (rank-8 modules, budget = LoRA-qv's trainable count), seed 0, the settings of bench/spt/run.sh (bench/RESULTS.md: $EPOCHS epochs, batch $BATCH, lr $LR, trained on train800val200); \`sptctl tune --quantize int8\` then \`sptctl export --merge --quantize int4\` of the same trained model. Test top-1 (%) with ONNX Runtime; drop = fp32 merged − quantized, in points. Disagreement: share of images whose predicted class differs from the fp32 merged model's, measured by export's own check on the training split (the runs have no separate val split)."
		echo
		echo "| task | test images | fp32 merged | int8 | int8 drop | int4 | int4 drop | int8 disagreement | int4 disagreement |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
		for t in $TASKS; do
			r=$CACHE/runs/$t/report.json
			[[ -f $r && -f $CACHE/runs/$t/int4.json ]] || { echo "| $t | (run missing) |"; continue; }
			f=$(jq -r '.top1_merged' "$r") q8=$(jq -r '.quantized.top1' "$r") q4=$(jq -r '.top1' "$CACHE/runs/$t/int4.json")
			jq -rn --arg t "$t" --argjson n "$(jq .test_n "$r")" --argjson f "$f" --argjson q8 "$q8" --argjson q4 "$q4" \
				--argjson d8 "$(jq .quantized.check.disagreement "$r")" --argjson d4 "$(jq .quantize.check.disagreement "$CACHE/runs/$t/int4-export.json")" \
				"$F1"'
				 "| \($t) | \($n) | \($f*100|f1) | \($q8*100|f1) | \(($f-$q8)*100|f1) | \($q4*100|f1) | \(($f-$q4)*100|f1) | \($d8*100|f1)% | \($d4*100|f1)% |"'
		done
		jq -rs "$F1"' "| **mean** | | **\(map(.f)|add/length*100|f1)** | **\(map(.q8)|add/length*100|f1)** | **\(map(.f-.q8)|add/length*100|f1)** | **\(map(.q4)|add/length*100|f1)** | **\(map(.f-.q4)|add/length*100|f1)** | | |"' \
			<(for t in $TASKS; do r=$CACHE/runs/$t/report.json; [[ -f $r && -f $CACHE/runs/$t/int4.json ]] &&
				jq -n --argjson f "$(jq .top1_merged "$r")" --argjson q8 "$(jq .quantized.top1 "$r")" --argjson q4 "$(jq .top1 "$CACHE/runs/$t/int4.json")" '{f:$f,q8:$q8,q4:$q4}'; done)
		echo
		echo "Target: int8 drop ≤ 0.5 points."
	fi
	if [[ -f $V/latency.json ]]; then
		L=$V/latency.json
		echo
		echo "## vit_b_16: file size and ONNX Runtime latency"
		echo
		echo "torchvision vit_b_16 with random weights (\`bench/make_vit_b16.py\`), a LoRA-qv rank-8 plan injected and exported merged by \`sptctl export --merge [--quantize int8|int4]\`; latency of one ONNX Runtime session per model ($(jq .threads "$L") intra-op threads), $(jq .runs "$L") rounds after $(jq .warmup "$L") warm-up runs, models in turn each round, on a random 224×224 batch; median (quartiles) in ms; ratios are medians over the fp32 merged model's, from the same run. The machine was shared (see the load average above): absolute times are inflated by the other work, which hit every model alike (they run in turn); compare the ratios."
		echo
		echo "| model | file (MB) | size vs fp32 | batch 1 (ms) | vs fp32 | batch 8 (ms) | vs fp32 |"
		echo "|---|---:|---:|---:|---:|---:|---:|"
		for m in fp32 int8 int8_fused int4 int4_acc0; do
			desc=$(case $m in
				fp32) echo "fp32 merged" ;;
				int8) echo "**int8** (\`--quantize int8\`: DynamicQuantizeLinear + MatMulInteger)" ;;
				int8_fused) echo "int8, com.microsoft DynamicQuantizeMatMul form (not chosen)" ;;
				int4) echo "**int4** (\`--quantize int4\`: MatMulNBits, block 32, accuracy level 4)" ;;
				int4_acc0) echo "int4, accuracy level 0 (float multiply; not chosen)" ;;
			esac)
			jq -r --arg m "$m" --arg d "$desc" 'def ms: . * 10000 | round / 10;
				"| \($d) | \(.size[$m].bytes/1e5|round/10) | \(.size[$m].ratio_to_first*100|round/100) | \(.batch1[$m].median_s|ms) (\(.batch1[$m].p25_s|ms)–\(.batch1[$m].p75_s|ms)) | \(.batch1[$m].ratio_to_first*100|round/100) | \(.batch8[$m].median_s|ms) (\(.batch8[$m].p25_s|ms)–\(.batch8[$m].p75_s|ms)) | \(.batch8[$m].ratio_to_first*100|round/100) |"' "$L"
		done
		echo
		echo "Targets: int8 file ≤ 0.3× fp32 merged; int8 latency ≤ 0.6× fp32 merged at batch 1 and 8."
		echo
		echo "The export itself (one \`sptctl export --merge --quantize\` process: load, merge, parity of the fp32 merge against the injected model on libtorch and ONNX Runtime, quantize, output check, write): int8 $(cat "$V/int8.time" 2>/dev/null | awk '{printf "%s s, peak RSS %.0f MB", $1, $3/1024}'), int4 $(cat "$V/int4.time" 2>/dev/null | awk '{printf "%s s, peak RSS %.0f MB", $1, $3/1024}'). Export's check without data (logits vs fp32 merged on one random input): int8 relative difference $(jq -r '.quantize.check.rel*1000|round/1000' "$V/int8-export.json"), int4 $(jq -r '.quantize.check.rel*1000|round/1000' "$V/int4-export.json")."
	fi
} >"$OUTMD.tmp"
mv "$OUTMD.tmp" "$OUTMD"
echo "done in $(($(date +%s) - start))s; see $OUTMD" >&2

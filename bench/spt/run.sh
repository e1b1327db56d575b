#!/usr/bin/env bash
# The SPT benchmark: a VTAB-1k-style suite of four 1,000-example tasks, nine methods
# from the same code (sptctl tune) at comparable budgets, three seeds, a budget sweep of
# SPT-LoRA vs LoRA-qv, the sensitivity pattern per task; results in bench/RESULTS.md,
# figures in bench/figures/.
#
# Usage: bench/spt/run.sh            (after `make build` and models/make-backbone.sh)
#
# Everything intermediate goes to bench/cache/spt/ (git-ignored): tasks/ (carved once,
# skipped when present), runs/TASK/METHOD/seedN/ (one `sptctl tune` each: meta.json,
# report.json, report.md, plan.json, log.txt; a run with a report.json is skipped on a
# rerun, so an interrupted benchmark resumes), sens/ (sensitivity summaries, sptctl's and
# PyTorch's cross-check).
# Knobs (environment): EPOCHS, BATCH, LR, LR_FULL, WARMUP, WD, DROPOUT, SEEDS,
# SWEEP_TASKS, SWEEP_RANKS, SWEEP_SEEDS, TASKS, JOBS, NOTE, MODEL, SPTCTL, CARVE_ONLY,
# PRECISION (fp32, the default: runs/; bf16: runs-bf16/, `tune --precision bf16`; RESULTS.md
# shows the fp32 suite and, where runs-bf16/ holds runs, the bf16 suite beside it). RESULTS.md
# states the values used; change them and the cache's runs no longer match: remove the runs folder.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# the knobs given, for the command RESULTS.md states
given=$(for v in PRECISION TASKS SWEEP_TASKS JOBS SEEDS EPOCHS RESULTS FIGURES; do [ -n "${!v+x}" ] && printf '%s=%q ' "$v" "${!v}"; done)

MODEL=${MODEL:-models/vit-fmnist.onnx}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
CACHE=${CACHE:-bench/cache/spt}
RESULTS=${RESULTS:-bench/RESULTS.md}
FIGURES=${FIGURES:-bench/figures}
EPOCHS=${EPOCHS:-10}
BATCH=${BATCH:-64}
LR=${LR:-5e-3}
LR_FULL=${LR_FULL:-3e-4}
WARMUP=${WARMUP:-1}
WD=${WD:-1e-4}
DROPOUT=${DROPOUT:-0.1}
RANK=8
SEEDS=${SEEDS:-"0 1 2"}
TASKS=${TASKS:-"fmnist-new rotation digits inverted"}
SWEEP_TASKS=${SWEEP_TASKS-"digits fmnist-new"} # set and empty: no sweep
SWEEP_RANKS=${SWEEP_RANKS:-"1 2 4 8 16"}
SWEEP_SEEDS=${SWEEP_SEEDS:-$SEEDS}
TEST_N=${TEST_N:-1000}
PRECISION=${PRECISION:-fp32}
case $PRECISION in
fp32) RUNS=$CACHE/runs ;;
bf16) RUNS=$CACHE/runs-bf16 ;;
*) echo "run.sh: PRECISION must be fp32 or bf16, not $PRECISION" >&2; exit 1 ;;
esac

die() { echo "run.sh: $*" >&2; exit 1; }
mkdir -p "$CACHE/tasks" "$RUNS" "$CACHE/sens"
# a private copy of the binary: a `make clean` elsewhere must not pull it from under the runs
if [ -z "${SPTCTL:-}" ]; then
	[ -x bin/sptctl ] || make build || die "make build failed"
	cp bin/sptctl "$CACHE/sptctl.tmp" && mv "$CACHE/sptctl.tmp" "$CACHE/sptctl" || die "cannot copy bin/sptctl"
	SPTCTL=$CACHE/sptctl
fi
export SPTCTL_ORT_LIB=${SPTCTL_ORT_LIB:-$PWD/third_party/onnxruntime/libonnxruntime.so.1}
[ -f "$MODEL" ] || die "$MODEL is missing: run models/make-backbone.sh first"
# the cached runs belong to one backbone: refuse to mix them with another one's
sum=$(sha256sum "$MODEL" | cut -d' ' -f1)
if [ -f "$CACHE/model.sha256" ] && [ "$(cat "$CACHE/model.sha256")" != "$sum" ]; then
	die "$MODEL changed since the cached runs were made: remove $CACHE/runs $CACHE/runs-bf16 $CACHE/sens $CACHE/model.sha256 and rerun"
fi
echo "$sum" >"$CACHE/model.sha256"
start=$(date +%s)

# ---------- 1. the tasks (carved once) ----------
declare -A DESC
DESC[fmnist-new]="new classes: Fashion-MNIST classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), which the backbone never saw; 5 classes, test: $TEST_N of the Fashion-MNIST test images of those classes"
DESC[rotation]="rotation prediction: Fashion-MNIST classes 5-9 images turned by 0/90/180/270 degrees, label = the turn (\`sptctl data fewshot --task rotation\`); 4 classes, test: $TEST_N"
DESC[digits]="domain shift: scikit-learn's 8×8 handwritten digits (\`load_digits\`, 1,797 images) upscaled bicubically to 28×28 grayscale PNGs (bench/spt/make_digits.py); 10 classes, stratified 800/200, test: the other 797 images"
DESC[inverted]="inverted intensity: Fashion-MNIST classes 5-9 (another draw, seed 1) with every image replaced by 255 − x (bench/spt/invert.py); 5 classes, test: $TEST_N"

carve() {
	local t=$1 dir=$CACHE/tasks/$1
	[ -f "$dir/test.txt" ] && return 0
	echo "== carving task $t"
	rm -rf "$dir" "$dir.tmp"
	case $t in
	fmnist-new) "$SPTCTL" data fewshot --from "$FMNIST" --classes 5-9 --train 800 --val 200 --test "$TEST_N" --seed 0 --out "$dir.tmp" ;;
	rotation) "$SPTCTL" data fewshot --from "$FMNIST" --classes 5-9 --task rotation --train 800 --val 200 --test "$TEST_N" --seed 0 --out "$dir.tmp" ;;
	digits) /usr/bin/python3 bench/spt/make_digits.py "$dir.tmp" --seed 0 ;;
	inverted)
		"$SPTCTL" data fewshot --from "$FMNIST" --classes 5-9 --train 800 --val 200 --test "$TEST_N" --seed 1 --out "$CACHE/tasks/.inverted-src" &&
			/usr/bin/python3 bench/spt/invert.py "$CACHE/tasks/.inverted-src" "$dir.tmp" &&
			rm -rf "$CACHE/tasks/.inverted-src"
		;;
	*) die "unknown task $t" ;;
	esac
	[ -f "$dir.tmp/test.txt" ] || die "carving $t failed"
	mv "$dir.tmp" "$dir"
}
for t in $TASKS; do carve "$t"; done
# CARVE_ONLY=1: stop here (bench/quantize/run.sh carves the same tasks this way)
[ -n "${CARVE_ONLY:-}" ] && exit 0

# ---------- 2. the jobs ----------
# Every run is independent (SPT's budget is LoRA-qv's trainable count, which `allocate`
# gives without training), so they go into one queue that WORKERS processes drain, each
# pinned to its own core with a single libtorch thread: on this shared 2-core machine,
# under a load of 6, one unpinned 2-thread process trained at ~50 images/s, two pinned
# 1-thread ones at ~340 images/s each (libtorch's OpenMP threads fight the other load).
WORKERS=${WORKERS:-$(nproc)}
classes() { awk '{print $2}' "$CACHE/tasks/$1/train800val200.txt" | sort -un | wc -l; }
# trainable COUNT of a baseline plan: plan_count TASK allocate-flags...
plan_count() {
	local t=$1 f
	shift
	f=$(mktemp "$RUNS/.plan.XXXXXX")
	"$SPTCTL" allocate --model "$MODEL" --classes "$(classes "$t")" --out "$f" --json "$@" 2>/dev/null | jq -r .trainable
	rm -f "$f"
}
declare -A QV ADRANK
for t in $TASKS; do
	QV[$t]=$(plan_count "$t" --strategy lora-qv --type lora --rank $RANK)
	[[ ${QV[$t]} =~ ^[0-9]+$ ]] || die "allocate --strategy lora-qv failed for $t"
	# the uniform Adapter's rank: the one whose trainable count is closest to LoRA-qv's
	best=1 bestd=-1
	for r in 1 2 3 4 6 8; do
		n=$(plan_count "$t" --strategy uniform --type adapter --rank $r)
		d=$((n > QV[$t] ? n - QV[$t] : QV[$t] - n))
		if [ $bestd -lt 0 ] || [ $d -lt $bestd ]; then best=$r bestd=$d; fi
	done
	ADRANK[$t]=$best
	echo "$t: LoRA-qv rank $RANK trains ${QV[$t]} parameters; uniform Adapter rank ${ADRANK[$t]} is the closest"
done

queue=$RUNS/.queue
: >"$queue"
: >"$RUNS/.failed"
# JOBS, if set, is a regular expression: only the jobs whose line ("TASK NAME METHOD
# SEED GROUP …", or "sens TASK") matches it are queued (a partial rerun).
job() { [[ "$*" =~ ${JOBS:-.} ]] && echo "$*" >>"$queue"; return 0; }
# the sensitivity summaries (figures, PyTorch cross-check) are fp32 scores: made by the fp32 suite
[ "$PRECISION" = fp32 ] && for t in $TASKS; do job sens "$t"; done
for seed in $SEEDS; do
	for t in $TASKS; do
		job "$t" lora-qv lora-qv "$seed" main $RANK 0 --strategy lora-qv --type lora --rank $RANK
		job "$t" spt-lora spt-lora "$seed" main $RANK "${QV[$t]}" --strategy spt --type lora --rank $RANK --budget "${QV[$t]}" --head random
		job "$t" spt-adapter spt-adapter "$seed" main $RANK "${QV[$t]}" --strategy spt --type adapter --rank $RANK --budget "${QV[$t]}" --head random
		job "$t" spt-dora spt-dora "$seed" main $RANK "${QV[$t]}" --strategy spt --type dora --rank $RANK --budget "${QV[$t]}" --head random
		job "$t" dora-qv dora-qv "$seed" main $RANK 0 --strategy qv --type dora --rank $RANK
		job "$t" adapter adapter "$seed" main "${ADRANK[$t]}" 0 --strategy uniform --type adapter --rank "${ADRANK[$t]}"
		job "$t" linear linear "$seed" main 0 0 --strategy linear
		job "$t" bitfit bitfit "$seed" main 0 0 --strategy bitfit
		job "$t" full full "$seed" main 0 0 --strategy full
	done
	# the budget sweep: LoRA-qv at each rank, SPT-LoRA (rank-8 modules) at the same count
	if [[ " $SWEEP_SEEDS " == *" $seed "* ]]; then
		for st in $SWEEP_TASKS; do
			for r in $SWEEP_RANKS; do
				[ "$r" = $RANK ] && continue # the main table's runs are this point
				B=$(plan_count "$st" --strategy lora-qv --type lora --rank "$r")
				job "$st" lora-qv-r$r lora-qv "$seed" sweep "$r" 0 --strategy lora-qv --type lora --rank "$r"
				job "$st" spt-lora-r$r spt-lora "$seed" sweep "$r" "$B" --strategy spt --type lora --rank $RANK --budget "$B" --head random
			done
		done
	fi
done

# ---------- 3. running a job ----------
# tune CPU TASK NAME METHOD SEED GROUP RANK BUDGET tune-flags...
tune() {
	local cpu=$1 task=$2 name=$3 method=$4 seed=$5 group=$6 rank=$7 budget=$8
	shift 8
	local out=$RUNS/$task/$name/seed$seed lr=$LR
	[ "$method" = full ] && lr=$LR_FULL
	[ -f "$out/report.json" ] && return 0
	mkdir -p "$out"
	printf '{"task":"%s","method":"%s","group":"%s","seed":%d,"rank":%d,"budget":%d,"lr":%s}\n' \
		"$task" "$method" "$group" "$seed" "$rank" "$budget" "$lr" >"$out/meta.json"
	local t0=$SECONDS
	if taskset -c "$cpu" "$SPTCTL" tune --model "$MODEL" --data "$CACHE/tasks/$task" --out "$out" --json \
		--train-split trainval --val-split "" --test-split test \
		--epochs "$EPOCHS" --batch-size "$BATCH" --lr "$lr" --weight-decay "$WD" --warmup "$WARMUP" \
		--dropout "$DROPOUT" --seed "$seed" --precision "$PRECISION" "$@" >"$out/stdout.json" 2>"$out/log.txt" && [ -f "$out/report.json" ]; then
		printf '%s  %-10s %-14s seed %d  top-1 %5s  trainable %7s  %4ds  (cpu %d)\n' "$(date +%H:%M:%S)" "$task" "$name" "$seed" \
			"$(jq -r '.top1_after*1000|round/10' "$out/report.json")" "$(jq -r .trainable "$out/report.json")" $((SECONDS - t0)) "$cpu"
	else
		echo "FAILED: $task $name seed $seed (see $out/log.txt):" >&2
		tail -5 "$out/log.txt" >&2
		rm -f "$out/report.json"
		echo "$task/$name/seed$seed" >>"$RUNS/.failed"
	fi
	# keep the reports and the plan; the models are a few MB each and rebuilt by a rerun
	rm -rf "$out"/*.onnx "$out"/*.ckpt "$out/sidecar" "$out/scores.safetensors"
}

# sensitivity per task (head seed 0), for the figures
sens() {
	local cpu=$1 t=$2 s=$CACHE/sens/$2
	[ -f "$s.json" ] && return 0
	if taskset -c "$cpu" "$SPTCTL" sensitivity --model "$MODEL" --data "$CACHE/tasks/$t" --split trainval --batches 16 --batch-size 32 --precision fp32 \
		--head-seed 0 --seed 0 --out "$s.safetensors" --json >"$s.json.tmp" 2>"$s.log"; then
		mv "$s.json.tmp" "$s.json"
		echo "$(date +%H:%M:%S)  sensitivity $t done"
	else
		echo "FAILED: sensitivity $t (see $s.log)" >&2
		echo "sens/$t" >>"$RUNS/.failed"
	fi
	rm -f "$s.safetensors"
}

worker() {
	local cpu=$1 line
	while :; do
		line=$(flock "$queue.lock" sh -c 'head -n 1 "$1"; sed -i 1d "$1"' _ "$queue")
		[ -n "$line" ] || return 0
		# shellcheck disable=SC2086
		set -- $line
		if [ "$1" = sens ]; then sens "$cpu" "$2"; else tune "$cpu" "$@"; fi
	done
}
echo "== $(wc -l <"$queue") jobs (finished ones are skipped) on $WORKERS workers"
ncpu=$(nproc)
for ((w = 0; w < WORKERS; w++)); do worker $((w % ncpu)) & done
wait
rm -f "$queue" "$queue.lock"

# ---------- 4. reproducibility: the first main run once more, from scratch ----------
# (kept once made: a later rerun of this script skips it like any finished run)
if [[ " $TASKS " == *" fmnist-new "* ]] && [ "$PRECISION" = fp32 ]; then
	job fmnist-new lora-qv-repro lora-qv 0 repro $RANK 0 --strategy lora-qv --type lora --rank $RANK
	job fmnist-new spt-lora-repro spt-lora 0 repro $RANK "${QV[fmnist-new]}" --strategy spt --type lora --rank $RANK --budget "${QV[fmnist-new]}" --head random
	for ((w = 0; w < WORKERS; w++)); do worker $((w % ncpu)) & done
	wait
	rm -f "$queue" "$queue.lock"
fi

# ---------- 5. PyTorch cross-check of the sensitivity summaries ----------
for t in $TASKS; do
	s=$CACHE/sens/$t.torch.json
	[ -f "$s" ] || [ "$PRECISION" != fp32 ] && continue
	if /usr/bin/python3 bench/spt/torch_sensitivity.py "$MODEL" "$CACHE/tasks/$t" >"$s.tmp" 2>"$CACHE/sens/$t.torch.log"; then
		mv "$s.tmp" "$s"
	else
		echo "torch cross-check of $t failed (see $CACHE/sens/$t.torch.log)" >&2
	fi
done

mapfile -t failed <"$RUNS/.failed"

# ---------- 6. RESULTS.md and the figures ----------
seeds_json=$(printf '%s\n' $SEEDS | jq -s -c 'map(tonumber)')
ranks_json=$(printf '%s\n' $SWEEP_RANKS | jq -s -c 'map(tonumber)')
sweeps_json=$(printf '%s\n' $SWEEP_TASKS | jq -R . | jq -s -c .)
tasks_json=$(printf '%s\n' $TASKS | jq -R . | jq -s -c .)
desc_json=$(for t in $TASKS; do jq -n --arg k "$t" --arg v "${DESC[$t]}" '{($k): $v}'; done | jq -s -c add)
adr=$(for t in $TASKS; do echo "${ADRANK[$t]}"; done | sort -u | head -1)
upstream=$(jq -r '"test top-1 \(.top1*100|.*10|round/10)% on \(.n) upstream test images"' "${MODEL%.onnx}.upstream.json" 2>/dev/null || echo "upstream accuracy not recorded")
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
jq -n --arg cmd "${given}bench/spt/run.sh" --arg note "${NOTE:-}" --arg model "$MODEL" --argjson epochs "$EPOCHS" --argjson batch "$BATCH" \
	--argjson lr "$LR" --argjson lrf "$LR_FULL" --argjson wd "$WD" --argjson warmup "$WARMUP" --argjson dropout "$DROPOUT" \
	--argjson seeds "$seeds_json" --argjson rank $RANK --argjson adrank "${adr:-0}" --argjson sweeps "$sweeps_json" \
	--argjson ranks "$ranks_json" --argjson tasks "$tasks_json" --argjson desc "$desc_json" \
	--arg machine "$(nproc) CPU cores ($cpu), shared with other work; $WORKERS runs at a time, each pinned to one core with one libtorch thread" \
	--arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" --arg up "$upstream" \
	'{command:$cmd, model:$model, epochs:$epochs, batch_size:$batch, lr:$lr, lr_full:$lrf, weight_decay:$wd, warmup:$warmup,
	  dropout:$dropout, train_split:"train800val200", seeds:$seeds, rank:$rank, adapter_rank:$adrank, sweep_tasks:$sweeps,
	  sweep_ranks:$ranks, tasks:$tasks, task_desc:$desc, machine:$machine, date:$date, upstream:$up, note:$note}' >"$CACHE/settings.json"

go run ./bench/spt -runs "$CACHE/runs" -runs-bf16 "$CACHE/runs-bf16" -sens "$CACHE/sens" -settings "$CACHE/settings.json" \
	-out "$RESULTS" -figures "$FIGURES" || die "writing RESULTS.md failed"

echo "benchmark done in $(($(date +%s) - start))s; see $RESULTS"
if [ ${#failed[@]} -gt 0 ]; then
	echo "failed runs: ${failed[*]}" >&2
	exit 1
fi

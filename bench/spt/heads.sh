#!/usr/bin/env bash
# Which head should sensitivity score through? The SPT suite's four tasks (bench/spt/run.sh,
# the same carving and the same training schedule) scored and tuned with each head:
#   random     the SPT paper's fresh seeded head (sptctl's rule before --head existed)
#   random4    the mean of the scores of 4 random heads (--head-seeds 4)
#   probe      a linear probe fitted first on the split's features (--head probe)
#   zero-mean  the centred class-mean head (--head zero-mean)
# Stability: the top-1% and top-5% overlap of the scores between seeds, two ways: the
# seed as `tune` uses it (batch order and head seed), and the head seed alone (the same
# batches). Accuracy: SPT-LoRA and SPT-Adapter with each head against LoRA-qv at LoRA-qv's
# trainable count, 3 seeds. Then what the probe's gain is made of: LoRA-qv started from
# the probe head (`tune --strategy lora-qv --head probe`) on the accuracy tasks, and the
# budget sweep per head (LoRA-qv at ranks SWEEP_RANKS against SPT-LoRA, rank-8 modules, at
# LoRA-qv's count of each rank, run.sh's sweep with each head). Results:
# bench/RESULTS-sensitivity.md (stability and accuracy), bench/RESULTS-sensitivity-sweep.md
# (LoRA-qv from the probe head, the sweep), figures bench/figures/.
#
# Usage: bench/spt/heads.sh      (after `make build` and models/make-backbone.sh)
#        SWEEP_ONLY=1 bench/spt/heads.sh   only the LoRA-qv-from-the-probe runs and the sweep
#        (and the main runs they compare with), only RESULTS-sensitivity-sweep.md
# Knobs (environment): SEEDS, TASKS (stability), ACC_TASKS, ACC_SEEDS and HEADS (accuracy runs),
# SWEEP_TASKS, SWEEP_RANKS, SWEEP_SEEDS (the sweep; SWEEP_TASKS set and empty: no sweep),
# SWEEP_ONLY, SWEEP_RESULTS,
# WORKERS, LOCK (a file to flock around each batch of runs: the stability runs, then
# each task × seed of the accuracy runs, so other heavy jobs can interleave), SPTCTL,
# and run.sh's EPOCHS, BATCH, LR, WARMUP, WD, DROPOUT, MODEL, FMNIST, CACHE.
# Runs are cached like run.sh's (bench/cache/spt/runs/, shared with it: LoRA-qv's runs are
# the same runs); score files go to bench/cache/spt/heads/.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODEL=${MODEL:-models/vit-fmnist.onnx}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
CACHE=${CACHE:-bench/cache/spt}
RESULTS=${RESULTS:-bench/RESULTS-sensitivity.md}
FIGURES=${FIGURES:-bench/figures}
EPOCHS=${EPOCHS:-10}
BATCH=${BATCH:-64}
LR=${LR:-5e-3}
WARMUP=${WARMUP:-1}
WD=${WD:-1e-4}
DROPOUT=${DROPOUT:-0.1}
RANK=8
SEEDS=${SEEDS:-"0 1 2"}
TASKS=${TASKS:-"fmnist-new rotation digits inverted"}
ACC_TASKS=${ACC_TASKS:-$TASKS}
ACC_SEEDS=${ACC_SEEDS:-$SEEDS}
HEADS=${HEADS:-"random probe random4 zero-mean"}
SWEEP_TASKS=${SWEEP_TASKS-"digits fmnist-new"} # as run.sh's
SWEEP_RANKS=${SWEEP_RANKS:-"1 2 4 8 16"}
SWEEP_SEEDS=${SWEEP_SEEDS:-$ACC_SEEDS}
SWEEP_ONLY=${SWEEP_ONLY:-}
SWEEP_RESULTS=${SWEEP_RESULTS:-bench/RESULTS-sensitivity-sweep.md}
LOCK=${LOCK:-$CACHE/.heads.lock}
SENS_HEADS="random probe random4 zero-mean"
TEST_N=${TEST_N:-1000}
# PRECISION: fp32 (runs/ and heads/, run.sh's fp32 runs) or bf16 (runs-bf16/ and heads-bf16/,
# run.sh's PRECISION=bf16 runs); scoring and training both use it
PRECISION=${PRECISION:-fp32}
case $PRECISION in
fp32) RUNS=$CACHE/runs HEADSDIR=$CACHE/heads ;;
bf16) RUNS=$CACHE/runs-bf16 HEADSDIR=$CACHE/heads-bf16 ;;
*) echo "heads.sh: PRECISION must be fp32 or bf16, not $PRECISION" >&2; exit 1 ;;
esac

die() { echo "heads.sh: $*" >&2; exit 1; }
mkdir -p "$CACHE/tasks" "$RUNS" "$HEADSDIR"
if [ -z "${SPTCTL:-}" ]; then
	[ -x bin/sptctl ] || make build || die "make build failed"
	cp bin/sptctl "$CACHE/sptctl-heads.tmp" && mv "$CACHE/sptctl-heads.tmp" "$CACHE/sptctl-heads" || die "cannot copy bin/sptctl"
	SPTCTL=$CACHE/sptctl-heads
fi
export SPTCTL_ORT_LIB=${SPTCTL_ORT_LIB:-$PWD/third_party/onnxruntime/libonnxruntime.so.1}
[ -f "$MODEL" ] || die "$MODEL is missing: run models/make-backbone.sh first"
sum=$(sha256sum "$MODEL" | cut -d' ' -f1)
if [ -f "$CACHE/model.sha256" ] && [ "$(cat "$CACHE/model.sha256")" != "$sum" ]; then
	die "$MODEL changed since the cached runs were made: remove $CACHE/runs $CACHE/heads $CACHE/model.sha256 and rerun"
fi
echo "$sum" >"$CACHE/model.sha256"
start=$(date +%s)

# ---------- the tasks: carved by bench/spt/run.sh itself (CARVE_ONLY=1), so they are its tasks ----------
CARVE_ONLY=1 TASKS="$TASKS" MODEL="$MODEL" FMNIST="$FMNIST" CACHE="$CACHE" TEST_N="$TEST_N" SPTCTL="$SPTCTL" \
	bench/spt/run.sh >&2 || die "carving the tasks failed"

WORKERS=${WORKERS:-$(nproc)}
classes() { awk '{print $2}' "$CACHE/tasks/$1/train800val200.txt" | sort -un | wc -l; }
# qv_count TASK RANK: LoRA-qv's trainable count at that rank (run.sh's plan_count)
qv_count() {
	local f n
	f=$(mktemp "$RUNS/.plan.XXXXXX")
	n=$("$SPTCTL" allocate --model "$MODEL" --classes "$(classes "$1")" --out "$f" --json --strategy lora-qv --type lora --rank "$2" 2>/dev/null | jq -r .trainable)
	rm -f "$f"
	[[ $n =~ ^[0-9]+$ ]] || die "allocate --strategy lora-qv --rank $2 failed for $1"
	echo "$n"
}
declare -A QV QVR
for t in $ACC_TASKS $SWEEP_TASKS; do
	QV[$t]=$(qv_count "$t" $RANK) || exit 1
done
for t in $SWEEP_TASKS; do
	for r in $SWEEP_RANKS; do QVR[$t/$r]=$(qv_count "$t" "$r") || exit 1; done
done
# head flags of a head name
headflags() {
	case $1 in
	random4) echo "--head random --head-seeds 4" ;;
	*) echo "--head $1 --head-seeds 1" ;;
	esac
}

queue=$HEADSDIR/.queue
: >"$HEADSDIR/.failed"
# job ARGS: queue a job unless its result is there (then a phase with nothing to do
# does not wait for LOCK)
job() {
	if [ "$1" = sens ]; then
		[ -f "$HEADSDIR/$2/$3/seed$4-head$5.json" ] && return 0
	else
		[ -f "$RUNS/$1/$2/seed$4/report.json" ] && return 0
	fi
	echo "$*" >>"$queue"
}
# The jobs go in batches (phases), each drained by WORKERS processes under LOCK.
# phase_sens: stability, sens TASK HEAD SEED HEADSEED (the seed as tune uses it; then
# the head seed alone)
phase_sens() {
	for t in $TASKS; do
		for h in $SENS_HEADS; do
			for s in $SEEDS; do job sens "$t" "$h" "$s" "$s"; done
		done
	done
	for t in $TASKS; do
		for h in $SENS_HEADS; do
			[ "$h" = zero-mean ] && [ "$t" != fmnist-new ] && continue # no head seed; measured once to show it
			for s in $SEEDS; do [ "$s" = 0 ] || job sens "$t" "$h" 0 "$s"; done
		done
	done
}
# runname TYPE HEAD: a run's folder name. The paper's head is tune's default, so its
# runs are run.sh's SPT runs (spt-lora, spt-adapter), shared through the cache like
# LoRA-qv's; the other heads' runs are spt-TYPE-head-HEAD.
runname() { if [ "$2" = random ]; then echo "spt-$1"; else echo "spt-$1-head-$2"; fi; }
# phase_acc TASK SEED: LoRA-qv and SPT with each head
phase_acc() {
	local t=$1 seed=$2 h ty
	job "$t" lora-qv lora-qv "$seed" main $RANK 0 --strategy lora-qv --type lora --rank $RANK
	for h in $HEADS; do
		for ty in lora adapter; do
			job "$t" "$(runname "$ty" "$h")" "spt-$ty" "$seed" "$h" $RANK "${QV[$t]}" --strategy spt --type $ty --rank $RANK --budget "${QV[$t]}" $(headflags "$h")
		done
	done
}
# phase_split SEED: what the probe's gain is made of, on every accuracy task: LoRA-qv from
# a fresh head (the main runs), LoRA-qv from the probe head, SPT-LoRA with the probe
phase_split() {
	local seed=$1 t
	for t in $ACC_TASKS; do
		job "$t" lora-qv lora-qv "$seed" main $RANK 0 --strategy lora-qv --type lora --rank $RANK
		job "$t" lora-qv-head-probe lora-qv "$seed" probe $RANK 0 --strategy lora-qv --type lora --rank $RANK --head probe
		job "$t" "$(runname lora probe)" spt-lora "$seed" probe $RANK "${QV[$t]}" --strategy spt --type lora --rank $RANK --budget "${QV[$t]}" $(headflags probe)
	done
}
# sweepname HEAD RANK: an SPT-LoRA sweep run's folder: run.sh's spt-lora-rR for the
# paper's head (the same runs), spt-lora-rR-head-HEAD for the others; rank 8 is the main run
sweepname() {
	if [ "$2" = $RANK ]; then
		runname lora "$1"
	elif [ "$1" = random ]; then
		echo "spt-lora-r$2"
	else
		echo "spt-lora-r$2-head-$1"
	fi
}
# phase_sweep SEED HEADS...: the budget sweep of run.sh for those heads, one point (LoRA-qv
# at rank r, SPT-LoRA with each head at its count) after the other
phase_sweep() {
	local seed=$1 t r h name
	shift
	for t in $SWEEP_TASKS; do
		for r in $SWEEP_RANKS; do
			if [ "$r" = $RANK ]; then
				job "$t" lora-qv lora-qv "$seed" main $RANK 0 --strategy lora-qv --type lora --rank $RANK
			else
				job "$t" "lora-qv-r$r" lora-qv "$seed" sweep "$r" 0 --strategy lora-qv --type lora --rank "$r"
			fi
			for h in "$@"; do
				name=$(sweepname "$h" "$r")
				# group and flags as run.sh's sweep for its runs (group sweep), else the head
				local group=$h
				[ "$r" != $RANK ] && [ "$h" = random ] && group=sweep
				job "$t" "$name" spt-lora "$seed" "$group" $RANK "${QVR[$t/$r]}" --strategy spt --type lora --rank $RANK --budget "${QVR[$t/$r]}" $(headflags "$h")
			done
		done
	done
}

# tune CPU TASK NAME METHOD SEED HEAD RANK BUDGET tune-flags... (as run.sh's tune)
tune() {
	local cpu=$1 task=$2 name=$3 method=$4 seed=$5 head=$6 rank=$7 budget=$8
	shift 8
	local out=$RUNS/$task/$name/seed$seed
	[ -f "$out/report.json" ] && return 0
	mkdir -p "$out"
	printf '{"task":"%s","method":"%s","group":"%s","seed":%d,"rank":%d,"budget":%d,"lr":%s}\n' \
		"$task" "$method" "$head" "$seed" "$rank" "$budget" "$LR" >"$out/meta.json"
	local t0=$SECONDS
	if taskset -c "$cpu" "$SPTCTL" tune --model "$MODEL" --data "$CACHE/tasks/$task" --out "$out" --json \
		--train-split trainval --val-split "" --test-split test \
		--epochs "$EPOCHS" --batch-size "$BATCH" --lr "$LR" --weight-decay "$WD" --warmup "$WARMUP" \
		--dropout "$DROPOUT" --seed "$seed" --precision "$PRECISION" "$@" >"$out/stdout.json" 2>"$out/log.txt" && [ -f "$out/report.json" ]; then
		printf '%s  %-10s %-24s seed %d  top-1 %5s  before %5s  trainable %7s  %4ds  (cpu %d)\n' "$(date +%H:%M:%S)" "$task" "$name" "$seed" \
			"$(jq -r '.top1_after*1000|round/10' "$out/report.json")" "$(jq -r '.top1_before*1000|round/10' "$out/report.json")" \
			"$(jq -r .trainable "$out/report.json")" $((SECONDS - t0)) "$cpu"
	else
		echo "FAILED: $task $name seed $seed (see $out/log.txt):" >&2
		tail -5 "$out/log.txt" >&2
		rm -f "$out/report.json"
		echo "$task/$name/seed$seed" >>"$HEADSDIR/.failed"
	fi
	rm -rf "$out"/*.onnx "$out"/*.ckpt "$out/sidecar" "$out/scores.safetensors"
}

# sens CPU TASK HEAD SEED HEADSEED: a score file (and, for seed 0, the plot)
sens() {
	local cpu=$1 t=$2 h=$3 s=$4 hs=$5
	local base=$HEADSDIR/$t/$h/seed$s-head$hs plot=()
	[ -f "$base.json" ] && return 0
	mkdir -p "$HEADSDIR/$t/$h"
	[ "$s$hs" = 00 ] && plot=(--plot "$FIGURES/sens-head-$t-$h.png")
	# shellcheck disable=SC2046
	if taskset -c "$cpu" "$SPTCTL" sensitivity --model "$MODEL" --data "$CACHE/tasks/$t" --split trainval --batches 16 --batch-size 32 \
		--seed "$s" --head-seed "$hs" --precision "$PRECISION" $(headflags "$h") --out "$base.safetensors" "${plot[@]}" --json >"$base.json.tmp" 2>"$base.log"; then
		mv "$base.json.tmp" "$base.json"
		echo "$(date +%H:%M:%S)  sensitivity $t $h seed $s head seed $hs: $(tail -1 "$base.log")"
	else
		echo "FAILED: sensitivity $t $h $s $hs (see $base.log)" >&2
		echo "heads/$t/$h/seed$s-head$hs" >>"$HEADSDIR/.failed"
	fi
}

worker() {
	local cpu=$1 line
	while :; do
		line=$(flock "$queue.lock" sh -c 'head -n 1 "$1"; sed -i 1d "$1"' _ "$queue")
		[ -n "$line" ] || return 0
		# shellcheck disable=SC2086
		set -- $line
		if [ "$1" = sens ]; then sens "$cpu" "$2" "$3" "$4" "$5"; else tune "$cpu" "$@"; fi
	done
}
mkdir -p "$FIGURES"
ncpu=$(nproc)
# run_phase NAME ARGS...: queue the phase's jobs, then drain them under LOCK
run_phase() {
	: >"$queue"
	"$@"
	[ -s "$queue" ] || return 0
	exec 9>>"$LOCK"
	flock 9
	echo "== $(date +%H:%M:%S) $* : $(wc -l <"$queue") jobs (finished ones are skipped) on $WORKERS workers"
	for ((w = 0; w < WORKERS; w++)); do worker $((w % ncpu)) & done
	wait
	flock -u 9
	exec 9>&-
	rm -f "$queue" "$queue.lock"
}
if [ -z "$SWEEP_ONLY" ]; then
	run_phase phase_sens
	for t in $ACC_TASKS; do # task by task: a task's seeds complete before the next task starts
		for seed in $ACC_SEEDS; do run_phase phase_acc "$t" "$seed"; done
	done
fi
# The split of the probe's gain first (seed by seed), then the sweep: its points for the
# other heads seed by seed, the 4-head mean (four scoring passes a run) last.
[[ " $HEADS " == *" probe "* ]] && for seed in $ACC_SEEDS; do run_phase phase_split "$seed"; done
early=() late=()
for h in $HEADS; do if [ "$h" = random4 ]; then late+=("$h"); else early+=("$h"); fi; done
for hs in "${early[*]}" "${late[*]}"; do
	[ -n "$hs" ] || continue
	# shellcheck disable=SC2086
	for seed in $SWEEP_SEEDS; do run_phase phase_sweep "$seed" $hs; done
done
mapfile -t failed <"$HEADSDIR/.failed"

# the command that reproduces this run: the knobs that differ from the defaults, then the script
command=bench/spt/heads.sh
[ "$HEADS" = "random probe random4 zero-mean" ] || command="HEADS=\"$HEADS\" $command"
[ "$SWEEP_SEEDS" = "$ACC_SEEDS" ] || command="SWEEP_SEEDS=\"$SWEEP_SEEDS\" $command"
[ "$SWEEP_RANKS" = "1 2 4 8 16" ] || command="SWEEP_RANKS=\"$SWEEP_RANKS\" $command"
[ "$SWEEP_TASKS" = "digits fmnist-new" ] || command="SWEEP_TASKS=\"$SWEEP_TASKS\" $command"
[ -z "$SWEEP_ONLY" ] || command="SWEEP_ONLY=1 $command"
[ "$ACC_TASKS" = "$TASKS" ] || command="ACC_TASKS=\"$ACC_TASKS\" $command"
[ "$ACC_SEEDS" = "$SEEDS" ] || command="ACC_SEEDS=\"$ACC_SEEDS\" $command"
[ "$TASKS" = "fmnist-new rotation digits inverted" ] || command="TASKS=\"$TASKS\" $command"
[ "$SEEDS" = "0 1 2" ] || command="SEEDS=\"$SEEDS\" $command"
[ "$PRECISION" = fp32 ] || command="PRECISION=$PRECISION $command"
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
jq -n --arg model "$MODEL" --argjson epochs "$EPOCHS" --argjson batch "$BATCH" --argjson lr "$LR" --argjson wd "$WD" \
	--argjson warmup "$WARMUP" --argjson dropout "$DROPOUT" --argjson rank $RANK \
	--argjson seeds "$(printf '%s\n' $SEEDS | jq -s -c 'map(tonumber)')" \
	--argjson tasks "$(printf '%s\n' $TASKS | jq -R . | jq -s -c .)" \
	--argjson acc_tasks "$(printf '%s\n' $ACC_TASKS | jq -R . | jq -s -c .)" \
	--argjson acc_seeds "$(printf '%s\n' $ACC_SEEDS | jq -s -c 'map(tonumber)')" \
	--argjson heads "$(printf '%s\n' $HEADS | jq -R . | jq -s -c .)" \
	--argjson sweep_tasks "$(printf '%s\n' $SWEEP_TASKS | jq -R . | jq -s -c 'map(select(. != ""))')" \
	--argjson sweep_ranks "$(printf '%s\n' $SWEEP_RANKS | jq -s -c 'map(tonumber)')" \
	--argjson sweep_seeds "$(printf '%s\n' $SWEEP_SEEDS | jq -s -c 'map(tonumber)')" \
	--argjson sweep_only "$([ -n "$SWEEP_ONLY" ] && echo true || echo false)" \
	--arg machine "$(nproc) CPU cores ($cpu), shared with other work; $WORKERS runs at a time, each pinned to one core" \
	--arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
	--arg cmd "$command" --arg precision "$PRECISION" \
	'{command:$cmd, model:$model, epochs:$epochs, batch_size:$batch, lr:$lr, weight_decay:$wd, warmup:$warmup,
	  dropout:$dropout, rank:$rank, seeds:$seeds, tasks:$tasks, acc_tasks:$acc_tasks, acc_seeds:$acc_seeds, heads:$heads, sweep_tasks:$sweep_tasks, sweep_ranks:$sweep_ranks, sweep_seeds:$sweep_seeds, sweep_only:$sweep_only, precision:$precision, machine:$machine, date:$date}' >"$HEADSDIR/settings.json"
# SWEEP_ONLY: RESULTS-sensitivity.md's stability and accuracy runs were not made here: leave it
out=$RESULTS
[ -z "$SWEEP_ONLY" ] || out=""
go run ./bench/spt/heads -cache "$CACHE" -runs "$RUNS" -heads "$HEADSDIR" -settings "$HEADSDIR/settings.json" -out "$out" \
	-sweep-out "$SWEEP_RESULTS" -figures "$FIGURES" || die "writing $RESULTS / $SWEEP_RESULTS failed"
echo "done in $(($(date +%s) - start))s; see ${out:+$out and }$SWEEP_RESULTS"
if [ ${#failed[@]} -gt 0 ]; then
	echo "failed: ${failed[*]}" >&2
	exit 1
fi

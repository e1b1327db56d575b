#!/usr/bin/env bash
# Issue 11: the training step cost of an SPT plan against a LoRA-only plan at the same
# trainable count, and against full fine-tuning, in fp32 and bf16, on the small built-in
# ViT (models/vit-fmnist.onnx, batch 64) and torchvision vit_b_16 (batch 8).
#
#   bench/stepcost/run.sh                  # writes bench/RESULTS-stepcost.md (ROUNDS=3)
#   MODELS=small ROUNDS=5 PLANS="spt lora" PRECISIONS=bf16 bench/stepcost/run.sh
#   KEEP=DIR bench/stepcost/run.sh        # keep (and reuse) the scores, plans and models in DIR
#   LOAD_NOTE="Nothing else ran." bench/stepcost/run.sh   # what else ran, for the report
#   AB=0 bench/stepcost/run.sh             # without the in-process A/B runs (AB_VIT_STEPS=8 pairs on vit_b_16)
#   REPORT_FROM=RUNS bench/stepcost/run.sh # only the report, from a saved runs file
#
# Plans (sptctl's own commands, as a user runs them): LoRA-only is `allocate --strategy
# lora-qv` (LoRA on q and v of every block, a new 5-class head; rank 8 on the small ViT,
# rank 11 on vit_b_16 so that its count is ~0.4M); SPT is `allocate --strategy spt --budget
# N` with N = the LoRA-only plan's trainable count and scores from `sptctl sensitivity` on a
# Fashion-MNIST few-shot task (classes 5-9); both injected with `sptctl inject`. Full
# fine-tuning: the base model with every float weight trainable (its own head).
# A step is what train.Fit does per batch: SetSeed, zero-grad, train-mode forward, mean
# cross-entropy, backward, AdamW update of the trainable tensors (bench/engine -trainable
# marked|all -adamw), one fixed random batch, 2 threads; median of the timed steps after
# untimed warm-ups: small ViT 40 timed steps after 3 warm-ups (~0.1 s a step: fewer were
# too noisy to compare two plans), vit_b_16 6 after 2 (2.5-6 s a step); SMALL_STEPS,
# SMALL_WARMUP, VIT_STEPS, VIT_WARMUP change them. Each measurement is its own process
# under /usr/bin/time (peak RSS); per round the plans run back to back in both
# precisions (order reversed every other round). Then (AB=1, the default) per round and
# precision one more process compiles both plans and alternates their steps
# (bench/engine -ab): a ratio of steps run back to back, which this machine's drift
# over minutes (±5-10% between processes) does not reach.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY-PASSIVE}
OUTMD=${OUTMD:-bench/RESULTS-stepcost.md}
PY=/usr/bin/python3
TIME=/usr/bin/time
VIT=bench/cache/vit_b_16.onnx
SMALL=models/vit-fmnist.onnx
THREADS=${THREADS:-2}
MODELS=${MODELS:-small vit_b_16}
PRECISIONS=${PRECISIONS:-fp32 bf16}
PLANS=${PLANS:-spt lora full}
SMALL_STEPS=${SMALL_STEPS:-40} SMALL_WARMUP=${SMALL_WARMUP:-3}
VIT_STEPS=${VIT_STEPS:-6} VIT_WARMUP=${VIT_WARMUP:-2}
AB=${AB:-1} AB_VIT_STEPS=${AB_VIT_STEPS:-8}
[[ -x $TIME ]] || { echo "run.sh: $TIME missing (apt-get install time)" >&2; exit 1; }
W=${KEEP:-$(mktemp -d)}
mkdir -p "$W"
[[ -n ${KEEP:-} ]] || trap 'rm -rf "$W"' EXIT
LOAD_START=$(uptime)
# the code measured: the commit, and whether the executor or the benchmark differ from it
REV=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine train bench/engine bench/stepcost inject || echo '+uncommitted changes')
: >"$W/runs"
: >"$W/ab"
if [[ -n ${REPORT_FROM:-} ]]; then
	cp "$REPORT_FROM" "$W/runs"
	LOAD_START=$(cat "$REPORT_FROM.load" 2>/dev/null || echo "(not saved)")
	REV=$(cat "$REPORT_FROM.rev" 2>/dev/null || echo "(not saved)")
	cp "$REPORT_FROM.plans" "$W/plans" 2>/dev/null || : >"$W/plans"
	cp "$REPORT_FROM.ab" "$W/ab" 2>/dev/null || : >"$W/ab"
	ROUNDS=$(awk '{print $NF}' "$W/runs" | sort -un | wc -l)
else
	[[ " $MODELS " != *" vit_b_16 "* || -f $VIT ]] || $PY bench/make_vit_b16.py "$VIT" >&2
	# ENGINE=, SPTCTL=: binaries built beforehand (e.g. from another version of the executor)
	if [[ -n ${ENGINE:-} ]]; then cp "$ENGINE" "$W/engine"; else go build -o "$W/engine" ./bench/engine; fi
	if [[ -n ${SPTCTL:-} ]]; then cp "$SPTCTL" "$W/sptctl"; else go build -o "$W/sptctl" ./cmd/sptctl; fi
	S=$W/sptctl
	[[ -d $W/task ]] || "$S" data fewshot --classes 5-9 --train 64 --val 8 --test 8 --seed 1 --out "$W/task" >/dev/null 2>&1
	: >"$W/plans"
	# plans MODEL PATH RANK SENS_BATCHES SENS_BATCH_SIZE: scores, the two plans, the injected models.
	plans() {
		local m=$1 path=$2 rank=$3 nb=$4 bs=$5 qv
		[[ -f $W/$m.scores ]] || "$S" sensitivity --model "$path" --data "$W/task" --batches "$nb" --batch-size "$bs" \
			--threads "$THREADS" --out "$W/$m.scores" >"$W/$m.sens.log" 2>&1 || { cat "$W/$m.sens.log" >&2; exit 1; }
		"$S" allocate --model "$path" --strategy lora-qv --rank "$rank" --classes 5 --out "$W/$m.lora.json" --json >"$W/$m.lora.sum" 2>/dev/null
		qv=$(jq -r .trainable "$W/$m.lora.sum")
		"$S" allocate --model "$path" --strategy spt --budget "$qv" --scores "$W/$m.scores" --out "$W/$m.spt.json" --json >"$W/$m.spt.sum" 2>/dev/null
		for p in lora spt; do
			"$S" inject --model "$path" --plan "$W/$m.$p.json" --out "$W/$m.$p.onnx" >/dev/null 2>&1
		done
		# what each plan holds: model plan trainable lora-modules sparse-matrices sparse-entries
		for p in lora spt; do
			jq -r --arg m "$m" --arg p "$p" --argjson n "$(jq .trainable "$W/$m.$p.sum")" '[$m, $p, $n,
				([.layers[]? | select(.mode == "lora")] | length),
				([.layers[]? | select((.indices // []) | length > 0)] | length),
				([.layers[]? | (.indices // []) | length] | add // 0)] | @tsv' "$W/$m.$p.json" >>"$W/plans"
		done
	}
	[[ " $MODELS " != *" small "* ]] || plans small "$SMALL" 8 4 32
	[[ " $MODELS " != *" vit_b_16 "* ]] || plans vit_b_16 "$VIT" 11 2 8
	cat "$W/plans" >&2

	# one MODEL PLAN PRECISION ROUND: one process; appends
	# "model plan precision step_s cpu_step_s trainable peak_MB load1 round".
	one() {
		local m=$1 p=$2 prec=$3 r=$4 batch steps warm path which load
		case $m in
		small) batch=64 steps=$SMALL_STEPS warm=$SMALL_WARMUP ;;
		vit_b_16) batch=8 steps=$VIT_STEPS warm=$VIT_WARMUP ;;
		esac
		if [[ $p == full ]]; then
			which=all path=$([[ $m == small ]] && echo "$SMALL" || echo "$VIT")
		else
			which=marked path=$W/$m.$p.onnx
		fi
		load=$(cut -d' ' -f1 /proc/loadavg)
		$TIME -f '%e %M' -o "$W/t" "$W/engine" -batch $batch -steps $steps -warmup $warm -threads "$THREADS" \
			-trainable $which -adamw -precision "$prec" "$path" >"$W/j" 2>"$W/e" || { cat "$W/e" >&2; exit 1; }
		local v rss
		v=$($PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["step_median_s"], d["cpu_step_median_s"], d["trainable_params"])' "$W/j")
		rss=$(awk '{printf "%.0f", $2/1024}' "$W/t")
		echo "$m $p $prec $v $rss $load $r" >>"$W/runs"
		echo "  $m $p $prec: $v (step s, CPU-s, trainable) $rss MB, load $load" >&2
	}
	# ab: the SPT and LoRA-only plans compiled in one process, their steps alternating
	# (bench/engine -ab): the ratio of two steps that ran back to back on the same
	# machine state, which separate processes minutes apart are not.
	ab() {
		local m=$1 prec=$2 r=$3 batch steps warm load
		case $m in
		small) batch=64 steps=$SMALL_STEPS warm=$SMALL_WARMUP ;;
		vit_b_16) batch=8 steps=$AB_VIT_STEPS warm=$VIT_WARMUP ;;
		esac
		load=$(cut -d' ' -f1 /proc/loadavg)
		"$W/engine" -batch $batch -steps $steps -warmup $warm -threads "$THREADS" -trainable marked -adamw \
			-precision "$prec" -ab "$W/$m.lora.onnx" "$W/$m.spt.onnx" >"$W/j" 2>"$W/e" || { cat "$W/e" >&2; exit 1; }
		local v
		v=$($PY -c 'import json,sys; d=json.load(open(sys.argv[1]))["ab"]; print(d["cpu_ratio_median"], d["step_ratio_median"])' "$W/j")
		echo "$m $prec $v $load $r" >>"$W/ab"
		echo "  $m A/B in one process, $prec: SPT / LoRA-only $v (CPU-s, wall), load $load" >&2
	}
	for r in $(seq "$ROUNDS"); do
		echo "round $r ($(uptime))" >&2
		order=""
		for prec in $PRECISIONS; do for p in $PLANS; do order+=" $p:$prec"; done; done
		((r % 2)) || order=$(tr ' ' '\n' <<<"$order" | tac | xargs)
		for m in $MODELS; do
			for x in $order; do one "$m" "${x%:*}" "${x#*:}" "$r"; done
			[[ $AB == 1 && " $PLANS " == *" spt "* && " $PLANS " == *" lora "* ]] || continue
			for prec in $PRECISIONS; do ab "$m" "$prec" "$r"; done
		done
		if [[ -n ${RUNS_COPY:-} ]]; then
			cp "$W/ab" "$RUNS_COPY.ab"
			cp "$W/runs" "$RUNS_COPY"
			cp "$W/plans" "$RUNS_COPY.plans"
			echo "$LOAD_START" >"$RUNS_COPY.load"
			echo "$REV" >"$RUNS_COPY.rev"
		fi
	done
fi
LOAD_END=$(uptime)

$PY - "$W/runs" "$W/plans" "$W/ab" <<'PYEOF' >"$W/table"
import statistics as st, sys
R = [dict(model=r[0], plan=r[1], prec=r[2], step=float(r[3]), cpu=float(r[4]), n=int(r[5]), rss=int(r[6]), load=float(r[7]), round=int(r[8]))
     for r in (l.split() for l in open(sys.argv[1]) if l.strip())]
plans = {(r[0], r[1]): r for r in (l.split() for l in open(sys.argv[2]) if l.strip())}
AB = [dict(model=r[0], prec=r[1], cpu=float(r[2]), wall=float(r[3]), load=float(r[4]), round=int(r[5]))
      for r in (l.split() for l in open(sys.argv[3]) if l.strip())]
names = {"small": "small ViT (models/vit-fmnist.onnx), batch 64", "vit_b_16": "vit_b_16 224x224, batch 8"}
label = {"spt": "SPT (spt, budget = LoRA-qv's count)", "lora": "LoRA-only (lora-qv)", "full": "full fine-tuning"}

def pick(m, p, prec):
    return sorted((r for r in R if (r["model"], r["plan"], r["prec"]) == (m, p, prec)), key=lambda r: r["round"])

def ratio(m, prec, key):
    out = []
    for rnd in sorted({r["round"] for r in R}):
        a = [r[key] for r in pick(m, "spt", prec) if r["round"] == rnd]
        b = [r[key] for r in pick(m, "lora", prec) if r["round"] == rnd]
        if a and b:
            out.append(a[0] / b[0])
    return out

for m in ("small", "vit_b_16"):
    if not any(r["model"] == m for r in R):
        continue
    print(f"### {names[m]}")
    print()
    for p in ("lora", "spt"):
        if (m, p) in plans:
            _, _, n, lora, sm, se = plans[(m, p)]
            print(f"- {label[p]}: {int(n):,} trainable; {lora} LoRA modules, {se} sparse entries in {sm} matrices")
    print()
    print("| plan | precision | trainable | step s (median) | CPU-s / step (median) | peak RSS MB (max) | step s per round | CPU-s per round | load per process |")
    print("|---|---|---:|---:|---:|---:|---|---|---|")
    for prec in ("fp32", "bf16"):
        for p in ("spt", "lora", "full"):
            rs = pick(m, p, prec)
            if not rs:
                continue
            print(f"| {label[p]} | {prec} | {rs[0]['n']:,} | {st.median(r['step'] for r in rs):.3f} | {st.median(r['cpu'] for r in rs):.3f} | "
                  f"{max(r['rss'] for r in rs)} | {', '.join(format(r['step'], '.3f') for r in rs)} | "
                  f"{', '.join(format(r['cpu'], '.3f') for r in rs)} | {', '.join(format(r['load'], '.1f') for r in rs)} |")
    print()
    print("| precision | SPT / LoRA-only step, by CPU-s (median; per round) | by wall s (median; per round) | target <= 1.1 (by CPU-s) | SPT / LoRA-only peak RSS | target <= 1.10 | full / LoRA-only step (CPU-s) |")
    print("|---|---|---|---|---|---|---|")
    for prec in ("fp32", "bf16"):
        c, w = ratio(m, prec, "cpu"), ratio(m, prec, "step")
        if not c:
            continue
        rs, rl, rf = pick(m, "spt", prec), pick(m, "lora", prec), pick(m, "full", prec)
        mem = max(r["rss"] for r in rs) / max(r["rss"] for r in rl)
        full = f"{st.median(r['cpu'] for r in rf) / st.median(r['cpu'] for r in rl):.2f}" if rf else "-"
        print(f"| {prec} | {st.median(c):.2f} ({', '.join(format(v, '.2f') for v in c)}) | {st.median(w):.2f} ({', '.join(format(v, '.2f') for v in w)}) | "
              f"{'yes' if st.median(c) <= 1.1 else '**no**'} | {mem:.2f} ({max(r['rss'] for r in rs)} / {max(r['rss'] for r in rl)} MB) | "
              f"{'yes' if mem <= 1.1 else '**no**'} | {full} |")
    print()
    ab = [r for r in AB if r["model"] == m]
    if ab:
        print("In one process (`bench/engine -ab`: both plans compiled, their steps alternating, the ratio per pair of")
        print("steps, its median per process), one process per round and precision:")
        print()
        print("| precision | SPT / LoRA-only step, by CPU-s (median of rounds; per round) | by wall s (median; per round) | target <= 1.1 (by CPU-s) | load per process |")
        print("|---|---|---|---|---|")
        for prec in ("fp32", "bf16"):
            rs = sorted((r for r in ab if r["prec"] == prec), key=lambda r: r["round"])
            if not rs:
                continue
            c, w = [r["cpu"] for r in rs], [r["wall"] for r in rs]
            print(f"| {prec} | {st.median(c):.2f} ({', '.join(format(v, '.2f') for v in c)}) | {st.median(w):.2f} ({', '.join(format(v, '.2f') for v in w)}) | "
                  f"{'yes' if st.median(c) <= 1.1 else '**no**'} | {', '.join(format(r['load'], '.1f') for r in rs)} |")
        print()
PYEOF
{
	echo "# Step cost: SPT vs LoRA-only at equal trainable count vs full fine-tuning (issue 11)"
	echo
	echo "Command: \`ROUNDS=$ROUNDS${CMD_NOTE:-} bench/stepcost/run.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores, $THREADS libtorch threads,"
	echo "$REV, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(default: spin)})."
	echo "LoRA-only: \`allocate --strategy lora-qv\` (rank 8 on the small ViT, 11 on vit_b_16); SPT:"
	echo "\`allocate --strategy spt --budget N\` (rank-8 modules) with N the LoRA-only plan's trainable count and"
	echo "scores from \`sptctl sensitivity\` (Fashion-MNIST classes 5-9; small: 4 batches of 32, vit_b_16: 2 of 8);"
	echo "both through \`sptctl inject\` (5-class head). Full fine-tuning: every float weight of the base model"
	echo "(its own head). One step = what \`train\` does per batch: zero-grad, train-mode forward, cross-entropy,"
	echo "backward, AdamW update (\`bench/engine -trainable marked|all -adamw\`), one fixed random batch; median"
	echo "of the timed steps in each process (small: $SMALL_STEPS timed after $SMALL_WARMUP warm-ups, vit_b_16: $VIT_STEPS"
	echo "after $VIT_WARMUP); peak RSS the process's (/usr/bin/time). Per round the six processes (3 plans x fp32/bf16) ran back to back,"
	echo "the order reversed every other round; ratios are medians of the per-round ratios."
	echo
	echo "**Load.** ${LOAD_NOTE:-What else ran on the machine was not recorded (LOAD_NOTE says).}"
	echo "Uptime at the start \`$LOAD_START\`, at the end \`$LOAD_END\`; the 1-minute load before each process is in"
	echo "the tables. The ratios therefore use **CPU-s per step** (the process's user+sys time over the step, with"
	echo "OMP_WAIT_POLICY=PASSIVE so waiting threads sleep); wall-clock ratios are beside them."
	echo
	cat "$W/table"
} >"$OUTMD"
cat "$OUTMD"

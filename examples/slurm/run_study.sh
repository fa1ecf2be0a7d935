#!/bin/bash
# shellcheck disable=SC2086  # the *_ARGS variables are lists of options, split on purpose
# Submit a whole study to SLURM: every stage is its own job (stages 2, 3 and 5 an array of shards), and each
# starts only once the stages it reads have all finished (sbatch --dependency=afterok on the whole array).
#
#   stage 1 ──> stage 2 array ──> stage 3 array ──┐
#   render + stage 4 ──> stage 5 array ───────────┴──> stage 6
#
# Plain bash and sbatch: read it, copy it, change the variables below (or set them in the environment).
# Run it from anywhere on the cluster's login node; it prints the job ids it submitted.
#
#   examples/slurm/run_study.sh                        # the embedded default: ideal generator, spectral embedder
#
#   DATA=/scratch/$USER/study SHARDS_2=16 SHARDS_3=4 SHARDS_5=4 \
#   SBATCH_ARGS="--partition=gpu --time=12:00:00" GPU_ARGS="--gres=gpu:1" \
#   GENERATE_ARGS="--generator stable-audio-open --model stabilityai/stable-audio-open-1.0 --device cuda --dtype fp16" \
#   EMBEDDER_ARGS="--embedder clap --model laion/larger_clap_general" EMBED_ARGS="--device cuda --dtype fp16" \
#   NSYNTH_DIR=/datasets/nsynth-train examples/slurm/run_study.sh
#
# Why separate jobs: a task that ran stage 2 and then stage 3 would embed the index while other stage-2 shards
# were still writing theirs. Stage 3 refuses such an index (it names the missing prompts and the stage-2 shard
# that owns them), and stage 6 refuses embeddings whose chunks are not all written, so a wrong order fails loudly;
# this script gives the right one. A failed task leaves its dependants pending (DependencyNeverSatisfied):
# resubmit it with the same command (finished work is skipped), then release or resubmit the rest.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)   # every stage script runs from the checkout
PYTHON=${PYTHON:-$REPO/.venv/bin/python}     # the project's venv (make install), never a bare python
DATA=${DATA:-$REPO/data}
SBATCH=${SBATCH:-sbatch}
SBATCH_ARGS=${SBATCH_ARGS:-}                 # every job: e.g. --partition=... --account=... --time=...
GPU_ARGS=${GPU_ARGS:-}                       # the GPU stages 2, 3 and 5: e.g. --gres=gpu:1
SHARDS_2=${SHARDS_2:-4}                      # array tasks of each sharded stage
SHARDS_3=${SHARDS_3:-2}
SHARDS_5=${SHARDS_5:-2}
STAGE1_ARGS=${STAGE1_ARGS:-all}              # e.g. "all --prompts llm --prompt-count 1000 --annotator llm"
GENERATE_ARGS=${GENERATE_ARGS:---generator ideal}
INTERVENE=${INTERVENE:-}                     # an intervention spec: stage 2 --intervene, stage 6 --compare
EMBEDDER_ARGS=${EMBEDDER_ARGS:---embedder spectral}   # stages 3, 5 and 6 (the embeddings file's name)
EMBED_ARGS=${EMBED_ARGS:-}                   # stages 3 and 5 only: --device, --dtype, --batch-size, --chunk-rows
NSYNTH_DIR=${NSYNTH_DIR:-}                   # an NSynth split; unset: notes rendered from the soundfonts
RENDER_ARGS=${RENDER_ARGS:-}
STAGE4_ARGS=${STAGE4_ARGS:-}
STAGE6_ARGS=${STAGE6_ARGS:-}

# submit NAME AFTER ARRAY COMMAND...: one job (ARRAY empty) or an array of ARRAY tasks, started once every job in
# AFTER (ids joined by ':') has finished successfully; prints the job id. Each array task finds its shard in
# SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (data/stage.py parse_shard), so the command is the same for all.
submit() {
    local name=$1 after=$2 array=$3
    shift 3
    local options=(--parsable --job-name="musicologist-$name" --output="$DATA/logs/%x-%j.out")
    [[ -n $after ]] && options+=(--dependency="afterok:$after")
    [[ -n $array ]] && options+=(--array="0-$((array - 1))" --output="$DATA/logs/%x-%A_%a.out")
    $SBATCH "${options[@]}" $SBATCH_ARGS "$@" | cut -d';' -f1
}

mkdir -p "$DATA/logs"
cd "$REPO"
common=(--data "$DATA" --no-progress)
q() { printf '%q ' "$@"; }   # one shell word per argument inside --wrap

stage1=$(submit stage1 "" "" --wrap="$(q "$PYTHON" data/prompts/stage1_prompts.py --data "$DATA" $STAGE1_ARGS)")

stage2=$(submit stage2 "$stage1" "$SHARDS_2" $GPU_ARGS --wrap="$(q "$PYTHON" diffusion/stage2_generate.py \
    "${common[@]}" $GENERATE_ARGS ${INTERVENE:+--intervene "$INTERVENE"})")

stage3=$(submit stage3 "$stage2" "$SHARDS_3" $GPU_ARGS --wrap="$(q "$PYTHON" embeddings/stage3_embed_generated.py \
    "${common[@]}" $EMBEDDER_ARGS $EMBED_ARGS)")

if [[ -n $NSYNTH_DIR ]]; then
    notes=$(q "$PYTHON" interp/stage4_concept_sets.py "${common[@]}" --nsynth-dir "$NSYNTH_DIR" $STAGE4_ARGS)
else
    notes="$(q "$PYTHON" data/nsynth/render_soundfont.py "${common[@]}" $RENDER_ARGS) && $(q "$PYTHON" \
        interp/stage4_concept_sets.py "${common[@]}" --nsynth-dir "$DATA/nsynth/nsynth-soundfont" $STAGE4_ARGS)"
fi
stage4=$(submit stage4 "" "" --wrap="$notes")

stage5=$(submit stage5 "$stage4" "$SHARDS_5" $GPU_ARGS --wrap="$(q "$PYTHON" interp/stage5_embed_nsynth.py \
    "${common[@]}" $EMBEDDER_ARGS $EMBED_ARGS)")

stage6=$(submit stage6 "$stage3:$stage5" "" --wrap="$(q "$PYTHON" interp/stage6_probe.py "${common[@]}" \
    $EMBEDDER_ARGS $STAGE6_ARGS ${INTERVENE:+--compare})")

echo "submitted: stage 1 $stage1, stage 2 $stage2 ($SHARDS_2 tasks), stage 3 $stage3 ($SHARDS_3 tasks)," \
     "stage 4 $stage4, stage 5 $stage5 ($SHARDS_5 tasks), stage 6 $stage6; logs in $DATA/logs/"

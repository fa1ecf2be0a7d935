# Musicologist — `make demo` runs the six stages on the embedded default; `make test` runs the test suite.
# Both create the environment from nothing: a venv with torch==2.13.0 installed first (TORCH_INDEX picks the build:
# CPU or CUDA), then everything else under constraints.txt so that no dependency can replace that torch.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data
EMBEDDER ?= spectral
# MODEL: the embedder's checkpoint (hub id or local directory), passed to stages 3, 5 and 6 when set, e.g.
#   make stage3 stage5 stage6 EMBEDDER=clap MODEL=laion/larger_clap_general
MODEL ?=
MODEL_ARG := $(if $(MODEL),--model $(MODEL))
# Extra options for stage 6, e.g. STAGE6_ARGS="--probe svm --bootstrap 200"
STAGE6_ARGS ?=
GENERATOR ?= ideal
# The generator's preset. The demo runs the ideal model on its planted geometry, where concept groups are decided
# at known, different steps and stage 2 writes the truth tables that stage 6's known-answer tables are held to
# (diffusion/planted.py, data/truth.py); PRESET= runs the generator's default preset instead.
PRESET ?= $(if $(filter ideal,$(GENERATOR)),planted)
# An intervention spec for stage 2 --intervene and stage 6 --compare (unset: none), e.g.
#   make stage2 stage3 stage6 INTERVENE=diffusion/specs/steer_ideal_demo.json
INTERVENE ?=
# The demo's commitment search (interp/commitment_search.py) on the ideal model: the last start step from which
# steering still moves the concept, to one sampler step. One concept fits the demo's time (~50 s CPU): is_synth_lead,
# the latest planted group's concept whose stage-6 probe reads the final clips best (README, "Commitment search").
# Options are the search's, e.g. COMMITMENT="--concept is_reed --concept is_string --concept is_synth_lead";
# COMMITMENT= skips it.
COMMITMENT ?= $(if $(filter ideal,$(GENERATOR)),--concept is_synth_lead)
# The judge (embeddings/judge_generated.py): a pretrained tagger hears what each clip contains, mapped to concepts by
# data/judge_tags.csv; stage 6 turns its verdicts into the judged-content yardstick. The demo tags each trajectory's
# final clip only (JUDGE_POSITIONS=all tags every position); JUDGE= skips it. JUDGE_MODEL picks the checkpoint.
JUDGE ?= musicnn-tags
JUDGE_MODEL ?=
JUDGE_POSITIONS ?= final
# torch goes in first, by itself: torch==2.13.0 from pip's configured index (in CI a local CPU wheel). On a GPU
# machine choose the build with the index it comes from, e.g. CUDA 12.8 or the CPU-only wheel:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Every later install runs under constraints.txt, whose torch==2.13.0 matches any 2.13.0 build (+cu128, +cpu), so no
# dependency can replace the one installed (README, "Sizing a real run").
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install browser stages stage1 stage2 stage3 judge stage4 stage5 commitment stage6 bench organism organism-demo \
  clean-data

demo: install stages

# The probes' notes come partly from FluidR3_GM (Debian's fluid-soundfont-gm, MIT); the generator's bank stays
# on TimGM6mb and the two share no recording (data/soundfont.py). apt runs beside pip (~20-30 s on its own).
FLUIDR3 := /usr/share/sounds/sf2/FluidR3_GM.sf2

install:
	@$(MAKE) --no-print-directory -j2 $(VENV)/.installed $(FLUIDR3)

$(FLUIDR3):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq fluid-soundfont-gm >/dev/null
	@test -f $@ || { echo "error: $@ is missing after installing fluid-soundfont-gm" >&2; exit 1; }

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_SPEC)
	# Editable: data, diffusion, embeddings and interp import from this checkout anywhere in the venv (notebooks).
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	# The build leaves setuptools' scratch folders in the checkout (the editable finder does not read them).
	rm -rf build musicologist.egg-info
	# tinysoundfont declares pyaudio (live playback only), which does not build here.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps tinysoundfont==0.3.7
	# musicnn (ISC) is used only as a container of its trained TensorFlow checkpoints, which embeddings/musicnn.py
	# reads without TensorFlow; its declared tensorflow>=1.14 and numpy<1.17 are for its own TF1 code, never run.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps musicnn==0.1.0
	touch $@

# --compare when this data folder holds intervened runs (expanded when stage 6 starts, after stage 2 has run).
COMPARE_ARG = $(if $(INTERVENE),$(if $(wildcard $(DATA)/generated/interventions/*/index),--compare))

# The commitment search runs before stage 6, whose report includes its section.
stages: stage1 stage2 stage3 judge stage4 stage5 commitment stage6

stage1:
	$(PY) data/prompts/stage1_prompts.py --data $(DATA)
stage2:
	$(PY) diffusion/stage2_generate.py --data $(DATA) --generator $(GENERATOR) $(if $(PRESET),--preset $(PRESET)) \
	  $(if $(INTERVENE),--intervene $(INTERVENE))
stage3:
	$(PY) embeddings/stage3_embed_generated.py --data $(DATA) --embedder $(EMBEDDER) $(MODEL_ARG)
judge:
	$(if $(JUDGE),$(PY) embeddings/judge_generated.py --data $(DATA) --judge $(JUDGE) $(if $(JUDGE_MODEL),--model \
	  $(JUDGE_MODEL)) --positions $(JUDGE_POSITIONS),@echo "judge: skipped (JUDGE is empty)")
stage4:
	$(PY) data/nsynth/render_soundfont.py --data $(DATA)
	$(PY) interp/stage4_concept_sets.py --data $(DATA) --nsynth-dir $(DATA)/nsynth/nsynth-soundfont
stage5:
	$(PY) interp/stage5_embed_nsynth.py --data $(DATA) --embedder $(EMBEDDER) $(MODEL_ARG)
commitment:
	$(if $(COMMITMENT),$(PY) interp/commitment_search.py --data $(DATA) --embedder $(EMBEDDER) $(MODEL_ARG) \
	  --generator $(GENERATOR) $(if $(PRESET),--preset $(PRESET)) $(COMMITMENT),@echo "commitment search: skipped (COMMITMENT is empty)")
stage6:
	$(PY) interp/stage6_probe.py --data $(DATA) --embedder $(EMBEDDER) $(MODEL_ARG) --judge '$(JUDGE)' \
	  $(if $(JUDGE_MODEL),--judge-model $(JUDGE_MODEL)) $(STAGE6_ARGS) $(COMPARE_ARG)

# The suite checks the README's demo numbers against the demo's own artifacts (tests/test_readme_numbers.py), so
# the demo's stages run first (seconds when `make demo` already made them; each stage skips finished work).
# The suite is ~16 minutes of CPU, mostly single-threaded: two pytest-xdist workers with one BLAS/torch thread each
# keep both cores of a 2-core machine busy. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install browser
	$(MAKE) --no-print-directory stages
	OMP_NUM_THREADS=1 $(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS))

# The report test opens report.html in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Timings live here, never in tests. Each prints ratios measured side by side in one run (see bench/README_*.md).
# The model organism (README.md, "The model organism"): a tiny StableAudioDiTModel trained from nothing on the planted
# bank, one seed on one CPU thread, then measured against its closed form (<data>/organism/<bank>/).
ORGANISM_BANK ?= planted
organism: install
	$(PY) diffusion/organism/train.py --data $(DATA) --bank $(ORGANISM_BANK)
	$(PY) diffusion/organism/evaluate.py --data $(DATA) --bank $(ORGANISM_BANK)

# The organism's activation-level analysis on the committed checkpoint (no training): probes per (block, step)
# against its realised content and the share of planted timings they recover, the commitment step of steering its
# blocks (difference-of-means and probe directions) searched to one step beside the ideal model's
# (interp/organism_analysis.py), interchange on its blocks (interp/organism_interchange.py); <data>/results/organism/.
# About 12 minutes on 2 cores (README.md, "The model organism", Cost).
organism-demo: install
	$(PY) interp/organism_analysis.py --data $(DATA)
	$(PY) interp/organism_interchange.py --data $(DATA)

bench: install
	$(PY) bench/bench_generation.py --size tiny
	$(PY) bench/bench_clap.py --clips 40
	$(PY) bench/bench_analysis.py
	$(PY) bench/bench_seed_stability.py
	$(PY) bench/bench_mix_transfer.py
	$(PY) bench/bench_annotator.py
	$(PY) bench/bench_musicgen.py --size tiny
	$(PY) bench/bench_interventions.py --size tiny
	$(PY) bench/bench_musicnn.py

clean-data:
	rm -rf $(DATA)/prompts/*.csv $(DATA)/prompts/*.json $(DATA)/generated $(DATA)/concepts $(DATA)/nsynth/nsynth-* $(DATA)/results

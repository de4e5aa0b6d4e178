# Every recipe sets up what it needs: a .venv with the project installed (see `setup`).
set shell := ["bash", "-euo", "pipefail", "-c"]
# Arguments reach the commands as "$@", so quoted ones ("Once upon a time", '<|endoftext|>') stay whole.
set positional-arguments := true

venv := ".venv"
python := venv / "bin/python"
# The CPU build of torch: on these machines `pip install torch==2.13.0` takes it from local disk.
# With a GPU, install the CUDA build into .venv first (README) and setup leaves it alone.
torch_spec := env_var_or_default("TORCH_SPEC", "torch==2.13.0")
shared := env_var_or_default("LMKIT_SHARED", "../shared")

# list the recipes
default:
    @just --list

# create or reuse .venv, install torch (CPU build when absent) and the project with its dev tools
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{python}} ] || ! {{python}} -c "import torch" 2>/dev/null; then
        echo "setup (first run only): creating .venv with torch (CPU build) and lmkit's dependencies, about 1.3 GB on disk; a few minutes" >&2
    fi
    [ -x {{python}} ] || python3 -m venv {{venv}}
    {{python}} -c "import torch" 2>/dev/null || {{python}} -m pip install -q "{{torch_spec}}"
    if [ ! -f {{venv}}/.installed ] || [ pyproject.toml -nt {{venv}}/.installed ]; then
        {{python}} -m pip install -q -e ".[dev]"
        touch {{venv}}/.installed
    fi

# the default test suite (under 2 minutes on 2 cores), with runtime shape checking (jaxtyping + beartype over core and params)
test *ARGS: setup
    {{python}} -m pytest --jaxtyping-packages=core,params,conftest.typechecker -m "not slow" -n 2 --dist loadfile "$@"

# every test, the slow end-to-end ones too (what CI runs)
test-all *ARGS: setup
    {{python}} -m pytest --jaxtyping-packages=core,params,conftest.typechecker "$@"

# train a model: `just train tinystories --preset cpu-small --data.path ../shared/data --max_steps 200`
train *ARGS: setup
    {{python}} -m pipelines.training.cli "$@"

# train a byte-level BPE tokenizer: `just train-tokenizer INPUT --model.vocab_size N --special '<|endoftext|>' --out DIR`
train-tokenizer *ARGS: setup
    {{python}} -m pipelines.tokenizer.train "$@"

# encode a text file to a .npy of token ids: `just tokenize INPUT --tokenizer DIR --out FILE.npy`
tokenize *ARGS: setup
    {{python}} -m pipelines.tokenizer.encode "$@"

# split one text file into train.txt and valid.txt: `just split-text ../shared/data/owt_sample.txt --out cache/owt-sample`
split-text *ARGS: setup
    {{python}} -m pipelines.experiments.split_text "$@"

# sample from a trained run: `just generate --run DIR --sample.prompt "Once upon a time"`
generate *ARGS: setup
    {{python}} -m pipelines.generate "$@"

# export a run to a Hugging Face transformers folder (Llama): `just export --run DIR --out FOLDER [--dtype bfloat16]`
export *ARGS: setup
    {{python}} -m pipelines.export "$@"

# draw learning curves of one or more runs to PNG beside them: `just plot RUN...`
plot *ARGS: setup
    {{python}} -m pipelines.experiments.plot "$@"

# run a grid of training variants: `just sweep CONFIG --vary schedule.lr=1e-4,1e-3`
sweep *ARGS: setup
    {{python}} -m pipelines.experiments.sweep "$@"

# parameter, FLOP, memory and time accounting for model configs
accounting *ARGS: setup
    {{python}} -m pipelines.experiments.accounting "$@"

# tokenizer experiments: compression, throughput, longest tokens
tokenizer-report *ARGS: setup
    {{python}} -m pipelines.experiments.tokenizer_report "$@"

# run one benchmark, side by side with its peer: `just bench model`
bench NAME *ARGS: setup
    {{python}} -m bench.{{NAME}} "${@:2}"

# tables and figures of an experiment log from sweep dirs (default: runs/experiment-log/): `just experiment-log runs/study/lr ...`
experiment-log *ARGS: setup
    {{python}} -m pipelines.experiments.experiment_log "$@"

# the unicode1/unicode2 answers of docs/writeup.md, run
unicode-demo *ARGS: setup
    {{python}} -m pipelines.experiments.unicode_demo "$@"

"""Stories sampled from a run's final parameters into RUN/samples.txt."""

from pathlib import Path

from core.tokenizer import Tokenizer
from core.tree import Tree
from pipelines.files.atomic import write_atomic
from pipelines.generate import sample_stories
from pipelines.training.config.config import TrainConfig
from pipelines.training.storage.run_dir import SAMPLES_FILE


def write_samples(run_dir: Path, params: Tree, config: TrainConfig, tokenizer: Tokenizer) -> None:
    sample = config.sample
    stories = sample_stories(
        params, config.model, tokenizer, sample.prompt, sample.count, sample.tokens, sample.temperature, sample.top_p,
        seed=config.seed,
    )
    text = "\n\n---\n\n".join(stories)
    write_atomic(run_dir / SAMPLES_FILE, text + "\n")
    print(f"\nsamples (temperature {sample.temperature}, top-p {sample.top_p}):\n\n{text}\n")

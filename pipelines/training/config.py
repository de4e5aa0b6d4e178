"""What a training run is: `TrainConfig` (model + optimisation + data + bookkeeping), its presets,
and how a command line resolves to one.

Resolution order, later wins: the preset < a JSON config file (`--config`, e.g. a run's
config.json) < individual flags (`--lr 3e-3`, `--d-model 256`) and `--set field=value`.
"""

import argparse
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import orjson

from core.config import ModelConfig

GRAD_MODES = ("autograd", "func")

# The handout's TinyStories baseline (§7.2): 17M non-embedding parameters, batch x steps x context
# = 128 x 10,000 x 256 = 327,680,000 tokens. The handout leaves the optimiser to be tuned; these
# are common starting points (LLaMA-style betas and weight decay), to be refined by a sweep.
BASELINE: dict[str, Any] = {
    "model": dict(vocab_size=10_000, context_length=256, d_model=512, d_ff=1344, num_layers=4, num_heads=16, rope_theta=10_000.0),
    "batch_size": 128,
    "max_steps": 10_000,
    "lr": 1e-3,
    "warmup_steps": 200,
    "eval_every": 500,
    "checkpoint_every": 1000,
}

# Downscaled to show learning within minutes on two CPU cores (the 1 MB sample in ../shared/data is
# ~250K tokens at this vocabulary, so longer runs start to overfit).
CPU_SMALL: dict[str, Any] = {
    "model": dict(vocab_size=2048, context_length=128, d_model=128, num_layers=4, num_heads=4, rope_theta=10_000.0),
    "batch_size": 32,
    "max_steps": 600,
    "lr": 3e-3,
    "warmup_steps": 30,
    "eval_every": 100,
    "eval_windows": 128,
    "checkpoint_every": 200,
    "sample_tokens": 96,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tinystories": {"baseline": BASELINE, "cpu-small": CPU_SMALL},
}


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    dataset: str = "tinystories"
    data: str | None = None  # directory with train/valid text or .npy; None: download TinyStories
    tokenizer: str | None = None  # tokenizer directory; None: trained on the train split (cached)
    batch_size: int = 32
    max_steps: int = 1000
    lr: float = 1e-3  # peak of the cosine schedule
    min_lr: float | None = None  # the floor after the decay; None: lr / 10, so sweeps over lr keep the ratio
    warmup_steps: int = 100
    cosine_steps: int | None = None  # where the decay ends; None: at max_steps (the handout's tip)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 100
    eval_windows: int = 256  # fixed, evenly spaced validation windows
    log_every: int = 10
    checkpoint_every: int = 500
    device: str = "auto"  # auto: cuda > mps > cpu
    compile: bool = False
    grad_mode: str = "autograd"  # or "func" (torch.func.grad_and_value); see bench/train.py
    seed: int = 0
    run_dir: str | None = None  # None: runs/<dataset>-<time>
    wandb: bool = False
    wandb_project: str = "lmkit"
    samples: int = 3
    sample_prompt: str = "Once upon a time"
    sample_tokens: int = 128
    sample_temperature: float = 0.8
    sample_top_p: float = 0.95

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"TrainConfig.model must be a ModelConfig, got {type(self.model).__name__}")
        for f in fields(self):
            if f.name != "model":
                _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
        positive = ("batch_size", "max_steps", "eval_every", "eval_windows", "log_every", "checkpoint_every", "sample_tokens")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "samples", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("eps", "weight_decay", "sample_temperature"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig.min_lr ({self.min_lr}) must lie in [0, lr = {self.lr}]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if not 0 < self.sample_top_p <= 1:
            raise ValueError(f"TrainConfig.sample_top_p must lie in (0, 1], got {self.sample_top_p!r}")
        if self.cosine_steps is not None and self.cosine_steps < self.warmup_steps:
            raise ValueError(
                f"TrainConfig.cosine_steps ({self.cosine_steps}) must be >= warmup_steps ({self.warmup_steps})"
            )
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"TrainConfig.grad_mode must be one of {GRAD_MODES}, got {self.grad_mode!r}")
        device = self.device.split(":")[0]
        if device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"TrainConfig.device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")
        if self.dataset not in PRESETS:
            raise ValueError(f"TrainConfig.dataset must be one of {sorted(PRESETS)}, got {self.dataset!r}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def decay_steps(self) -> int:
        return self.max_steps if self.cosine_steps is None else self.cosine_steps

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = dict(values)
        unknown = sorted(set(values) - set(_field_types()) - {"model"})
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(_field_types())}")
        if "model" not in values:
            raise ValueError("TrainConfig needs a 'model' entry (the ModelConfig fields)")
        model = values.pop("model")
        return cls(model=model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model), **values)


def resolve_config(
    dataset: str = "tinystories",
    preset: str = "baseline",
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> TrainConfig:
    """A validated TrainConfig from a preset, an optional JSON file and overrides by field name
    (model fields and training fields alike, e.g. {"lr": 3e-3, "d_model": 256})."""
    if dataset not in PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(PRESETS)}")
    if preset not in PRESETS[dataset]:
        raise ValueError(f"unknown preset {preset!r} for {dataset}; known: {sorted(PRESETS[dataset])}")
    values = {**PRESETS[dataset][preset], "dataset": dataset}
    values["model"] = dict(values["model"])
    if config_file is not None:
        loaded = orjson.loads(Path(config_file).read_bytes())
        values["model"].update(loaded.pop("model", {}))
        values.update(loaded)
    model_fields = {f.name for f in fields(ModelConfig)}
    for name, value in (overrides or {}).items():
        if name in model_fields:
            values["model"][name] = value
        elif name in _field_types() or name == "model":
            values[name] = value
        else:
            raise ValueError(f"unknown config field {name!r}; model fields: {sorted(model_fields)}, "
                             f"training fields: {sorted(_field_types())}")
    return TrainConfig.from_dict(values)


def with_overrides(config: TrainConfig, **overrides: Any) -> TrainConfig:
    """A copy of `config` with training or model fields replaced, validated again."""
    model_fields = {f.name for f in fields(ModelConfig)}
    model = {k: v for k, v in overrides.items() if k in model_fields}
    rest = {k: v for k, v in overrides.items() if k not in model_fields}
    return replace(config, model=replace(config.model, **model), **rest)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag-name` per ModelConfig and TrainConfig field (but `dataset`, which picks the
    presets and is the CLI's positional argument), plus `--set field=value`."""
    group = parser.add_argument_group("config fields (override the preset)")
    for name, annotation in _overridable_types().items():
        flag = "--" + name.replace("_", "-")
        kind = _base_type(annotation)
        if kind is bool:
            group.add_argument(flag, dest=name, nargs="?", const="true", default=argparse.SUPPRESS, metavar="BOOL")
        else:
            group.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=kind.__name__.upper())
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override any field")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The typed overrides given on the command line (flags and --set), by field name."""
    types_by_name = _overridable_types()
    raw = {name: getattr(args, name) for name in types_by_name if hasattr(args, name)}
    for item in args.set:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types_by_name:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types_by_name)}")
        raw[name] = value
    return {name: parse_value(name, value, types_by_name[name]) for name, value in raw.items()}


def parse_value(name: str, text: str, annotation: Any) -> Any:
    """A command-line string as the field's type; errors name the field."""
    optional = type(None) in typing.get_args(annotation)
    if optional and text.lower() in ("none", "null"):
        return None
    kind = _base_type(annotation)
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise ValueError(f"config field {name!r} expects {kind.__name__}, got {text!r}") from None


def _base_type(annotation: Any) -> type:
    """int for `int | None`, str for Literal[...] and str; the type a flag's text converts to."""
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(_base_type(a) for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _check_type(name: str, value: Any, annotation: Any) -> None:
    kind = _base_type(annotation)
    if value is None and type(None) in typing.get_args(annotation):
        return
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ValueError(f"TrainConfig.{name} must be {kind.__name__}, got {value!r}")


def _overridable_types() -> dict[str, Any]:
    types_by_name = {**_model_field_types(), **_field_types()}
    del types_by_name["dataset"]
    return types_by_name


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig) if f.name != "model"}


def _model_field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(ModelConfig)
    return {f.name: hints[f.name] for f in fields(ModelConfig)}

"""What a training run is: `TrainConfig`, a tree of small frozen dataclasses, and how a command
line resolves to one.

Every setting has one name from flag to function: its dotted path in the tree, e.g.
`schedule.lr`, `model.d_model`, `data.batch_size`. The trainer's flags (`--schedule.lr 3e-3`),
`--set schedule.lr=3e-3`, sweeps' `--vary schedule.lr=1e-3,3e-3` and `parse_overrides` all take
these names. Resolution order, later wins: the preset < a JSON config file (`--config`, e.g. a
run's config.json) < overrides.

Every value is checked before any work: its type, that a number is finite and an integer fits in
64 bits (`_check_type`, for every leaf), then each setting's range (`__post_init__`). A refusal is
a UsageError naming the setting.
"""

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from core.config import ModelConfig
from core.errors import UsageError
from pipelines.flags import INT64_MAX, INT64_MIN, closest
from pipelines.training.config.presets import PRESETS

GRAD_MODES = ("autograd", "func")
MAX_TIMEOUT_S = 7 * 24 * 3600  # a week: beyond it a collective's timeout overflows some backends' clocks


def _require(ok: bool, name: str, requirement: str, value: Any) -> None:
    if not ok:
        raise UsageError(f"TrainConfig.{name} must {requirement}, got {value!r}")


@dataclass(frozen=True)
class OptimizerConfig:
    """Global-norm gradient clipping, then AdamW on every parameter ("adamw"), or Muon on the hidden
    matrices and AdamW on the rest ("muon"; core/optim/muon.py, core/optim/partition.py). The
    AdamW fields serve AdamW in both; Muon's learning rate follows the schedule's shape, scaled
    from schedule.lr to muon_lr."""

    name: str = "adamw"  # or "muon"
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_gains: bool = False  # decay the RMSNorm gains too (torch.optim.AdamW decays every parameter)
    max_grad_norm: float = 1.0
    muon_lr: float = 0.02  # Muon's peak rate (modded-nanogpt's value)
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0  # its own: a step decays by rate x this, and muon_lr is ~20x schedule.lr

    def __post_init__(self) -> None:
        _require(self.name in ("adamw", "muon"), "optim.name", "be adamw or muon", self.name)
        for name in ("beta1", "beta2", "muon_momentum"):
            _require(0 <= getattr(self, name) < 1, f"optim.{name}", "lie in [0, 1)", getattr(self, name))
        for name in ("eps", "weight_decay", "muon_weight_decay"):
            _require(getattr(self, name) >= 0, f"optim.{name}", "be >= 0", getattr(self, name))
        for name in ("max_grad_norm", "muon_lr"):
            _require(getattr(self, name) > 0, f"optim.{name}", "be positive", getattr(self, name))


SCHEDULE_KINDS = ("cosine", "wsd")


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up to `lr`, then ("cosine") cosine decay to `final_lr` at `decay_steps`, or
    ("wsd": warm-up, stable, decay) `lr` held until the last `decay_fraction` of the steps between
    warm-up and `decay_steps`, then a linear decay to `final_lr` there; constant after."""

    lr: float = 1e-3
    final_lr: float | None = None  # None: lr / 10, so sweeps over lr keep the ratio
    warmup_steps: int = 100
    decay_steps: int | None = None  # None: at the run's max_steps (the handout's tip)
    kind: str = "cosine"  # one of SCHEDULE_KINDS
    decay_fraction: float = 0.2  # wsd only: the share of the post-warm-up steps spent decaying (1: linear from the warm-up on)

    def __post_init__(self) -> None:
        _require(self.lr > 0, "schedule.lr", "be positive", self.lr)
        _require(self.kind in SCHEDULE_KINDS, "schedule.kind", f"be one of {SCHEDULE_KINDS}", self.kind)
        _require(0 <= self.decay_fraction <= 1, "schedule.decay_fraction", "lie in [0, 1]", self.decay_fraction)
        if self.final_lr is not None:
            _require(0 <= self.final_lr <= self.lr, "schedule.final_lr", f"lie in [0, schedule.lr = {self.lr}]", self.final_lr)
        _require(self.warmup_steps >= 0, "schedule.warmup_steps", "be >= 0", self.warmup_steps)
        if self.decay_steps is not None:
            _require(self.decay_steps >= self.warmup_steps, "schedule.decay_steps",
                     f"be >= schedule.warmup_steps ({self.warmup_steps})", self.decay_steps)


@dataclass(frozen=True)
class DataConfig:
    path: str | None = None  # a directory of train/valid text or .npy; None: download TinyStories
    tokenizer: str | None = None  # a tokenizer directory; None: trained on the train split (cached)
    batch_size: int = 32
    train_mb: int | None = None  # download only the first N MB of the training text (None: all of it)

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, "data.batch_size", "be positive", self.batch_size)
        if self.train_mb is not None:
            _require(self.train_mb > 0, "data.train_mb", "be positive or None", self.train_mb)


@dataclass(frozen=True)
class EvalConfig:
    every: int = 100  # steps between validation losses
    windows: int = 256  # fixed, evenly spaced validation windows

    def __post_init__(self) -> None:
        for name in ("every", "windows"):
            _require(getattr(self, name) > 0, f"eval.{name}", "be positive", getattr(self, name))


@dataclass(frozen=True)
class SampleConfig:
    """Stories sampled from the final model into samples.txt."""

    count: int = 3
    prompt: str = "Once upon a time"
    tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95

    def __post_init__(self) -> None:
        _require(self.count >= 0, "sample.count", "be >= 0", self.count)
        _require(self.tokens > 0, "sample.tokens", "be positive", self.tokens)
        _require(self.temperature >= 0, "sample.temperature", "be >= 0", self.temperature)
        _require(0 < self.top_p <= 1, "sample.top_p", "lie in (0, 1]", self.top_p)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    dataset: str = "tinystories"
    max_steps: int = 1000
    log_every: int = 10
    checkpoint_every: int = 500
    device: str = "auto"  # auto: cuda > mps > cpu
    compile: bool = False
    grad_mode: str = "autograd"  # or "func" (torch.func.grad_and_value); see bench/train.py
    seed: int = 0  # initial parameters and the data order
    grad_accum: int = 1  # micro-batches per step: the global batch is data.batch_size x processes x grad_accum
    bucket_mb: float = 25.0  # size of the gradient all-reduce buckets when data-parallel
    shard_optimizer: bool = False  # data-parallel: each process keeps the AdamW moments of its share of the leaves (ZeRO-1)
    timeout_s: float = 300.0  # data-parallel: how long a collective waits for a process that died or hangs
    run_dir: str | None = None  # None: runs/<dataset>-<time>
    wandb: bool = False
    wandb_project: str = "lmkit"
    # Log the gradient noise scale (core/gns.py): needs two batch sizes, so grad_accum >= 2 or
    # several processes; the process count is known only at the start, which checks it.
    gns: bool = False

    def __post_init__(self) -> None:
        for name in ("max_steps", "log_every", "checkpoint_every"):
            _require(getattr(self, name) > 0, name, "be positive", getattr(self, name))
        _require(0 <= self.seed < 2**31, "seed", "lie in [0, 2**31)", self.seed)
        _require(self.grad_accum >= 1, "grad_accum", "be >= 1", self.grad_accum)
        _require(self.bucket_mb > 0, "bucket_mb", "be positive", self.bucket_mb)
        _require(0 < self.timeout_s <= MAX_TIMEOUT_S, "timeout_s", f"lie in (0, {MAX_TIMEOUT_S}] seconds", self.timeout_s)
        _require(self.grad_mode in GRAD_MODES, "grad_mode", f"be one of {GRAD_MODES}", self.grad_mode)
        _require(self.device.split(":")[0] in ("auto", "cpu", "cuda", "mps"), "device", "be auto, cpu, cuda[:N] or mps", self.device)
        _require(self.dataset in PRESETS, "dataset", f"be one of {sorted(PRESETS)}", self.dataset)

    @property
    def resolved_final_lr(self) -> float:
        """The rate the schedule ends at: schedule.final_lr, else schedule.lr / 10."""
        return self.schedule.lr / 10 if self.schedule.final_lr is None else self.schedule.final_lr

    @property
    def decay_start(self) -> int:
        """Where a "wsd" schedule leaves its constant rate: decay_fraction of the steps between the
        warm-up and decay_steps before decay_steps."""
        warmup, end = self.schedule.warmup_steps, self.resolved_decay_steps
        return end - round(self.schedule.decay_fraction * (end - warmup))

    @property
    def resolved_decay_steps(self) -> int:
        """Where the cosine ends: schedule.decay_steps, else max_steps (a run too short to finish
        its warm-up ends during it)."""
        if self.schedule.decay_steps is not None:
            return self.schedule.decay_steps
        return max(self.max_steps, self.schedule.warmup_steps)

    def gns_batch_sizes(self, world: int) -> tuple[int, int]:
        """The two batch sizes, in sequences, that `gns` compares: one micro-batch, and the step's
        whole batch over grad_accum micro-batches and `world` processes. With both accumulation and
        several processes this is the widest pair at hand (the further the big batch is from the
        small one, the less noisy the |G|² estimate), and one code path serves every case: with
        grad_accum 1 the micro-batch is this process's local batch."""
        small, big = self.data.batch_size, self.data.batch_size * self.grad_accum * world
        if big == small:
            raise UsageError("--gns compares gradients at two batch sizes: set grad_accum >= 2 or train on several processes (--nproc N)")
        return small, big

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """A validated config from nested plain values; unknown or mistyped fields are named."""
        if "model" not in values:
            raise UsageError("TrainConfig needs a 'model' entry (the ModelConfig fields)")
        return _build(cls, values, "")


def model_config(values: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from plain values, checked as a TrainConfig's `model` is (types, finite
    numbers, 64-bit integers, then ModelConfig's own ranges)."""
    return _build(ModelConfig, values, "model.")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """`cls` from a dict, nested dataclasses from nested dicts, each value type-checked by name."""
    if not isinstance(values, dict):
        raise UsageError(f"config field {prefix.rstrip('.') or 'root'!r} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"unknown config field(s) {[prefix + name for name in unknown]}; known: {sorted(prefix + k for k in known)}")
    required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [prefix + name for name in required if name not in values]
    if missing:
        raise UsageError(f"config field(s) {missing} must be given")
    built = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            built[name] = value if isinstance(value, kind) else _build(kind, value, f"{prefix}{name}.")
        else:
            _check_type(prefix + name, value, kind)
            built[name] = value
    try:
        return cls(**built)
    except UsageError:
        raise
    except ValueError as error:  # a dataclass's own validation (ModelConfig's) of the user's values
        raise UsageError(str(error)) from None


def field_types(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every leaf setting by its dotted name ("schedule.lr", "model.d_model", "seed"), with its type."""
    hints = typing.get_type_hints(cls)
    types_by_name: dict[str, Any] = {}
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            types_by_name.update(field_types(hints[f.name], f"{prefix}{f.name}."))
        else:
            types_by_name[prefix + f.name] = hints[f.name]
    return types_by_name


def parse_overrides(pairs: Iterable[str | tuple[str, str]]) -> dict[str, Any]:
    """Command-line assignments ("schedule.lr=3e-3" or ("schedule.lr", "3e-3")) as typed values
    by dotted name; an unknown name or a bad value is an error naming it."""
    types_by_name = field_types()
    typed: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=") if isinstance(pair, str) else (pair[0], "=", pair[1])
        name = name.strip()
        if not sep or name not in types_by_name:
            raise UsageError(f"{''.join(pair)!r}: expected NAME=VALUE with NAME a setting{_did_you_mean(name, types_by_name)}")
        typed[name] = parse_value(name, text.strip(), types_by_name[name])
    return typed


def parse_value(name: str, text: str, annotation: Any) -> Any:
    """A command-line string as the field's type; errors name the field."""
    if type(None) in typing.get_args(annotation) and text.lower() in ("none", "null"):
        return None
    kind = _base_type(annotation)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise UsageError(f"config field {name!r} expects {kind.__name__}, got {text!r}") from None


def resolve_config(
    dataset: str = "tinystories",
    preset: str = "baseline",
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> TrainConfig:
    """A validated TrainConfig from a preset, an optional JSON file and typed overrides by dotted
    name ({"schedule.lr": 3e-3, "model.d_model": 256})."""
    if dataset not in PRESETS:
        raise UsageError(f"unknown dataset {dataset!r}; known: {sorted(PRESETS)}")
    if preset not in PRESETS[dataset]:
        raise UsageError(f"unknown preset {preset!r} for {dataset}; known: {sorted(PRESETS[dataset])}")
    values = _merge({"dataset": dataset}, PRESETS[dataset][preset])
    if config_file is not None:
        values = _merge(values, read_config_file(Path(config_file)))
    return TrainConfig.from_dict(_merge(values, _nest(overrides or {})))


def with_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with settings replaced by dotted name, validated again."""
    return TrainConfig.from_dict(_merge(config.to_dict(), _nest(overrides)))


def read_config_file(path: Path) -> dict[str, Any]:
    """The JSON object in the config file `path`; UsageError when it cannot be read or is not one."""
    try:
        values = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        raise UsageError(f"config file {path} is not valid JSON: {error}") from None
    except OSError as error:
        raise UsageError(f"config file {path}: {error.strerror or error}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a JSON object")
    return values


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"schedule.lr": 1} -> {"schedule": {"lr": 1}}; names are checked against the config's."""
    known = field_types()
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        if name not in known:
            raise UsageError(f"unknown config field {name!r}{_did_you_mean(name, known)}")
        *path, leaf = name.split(".")
        node = nested
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _base_type(annotation: Any) -> type:
    """int for `int | None`; the type a flag's text converts to."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(_base_type(a) for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """The value's type, and for numbers what every setting needs: finite, and an integer that
    fits in 64 bits (JSON, numpy and torch all hold it); ranges are each setting's own check."""
    if value is None and type(None) in typing.get_args(annotation):
        return
    kind = _base_type(annotation)
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise UsageError(f"TrainConfig.{name} must be {kind.__name__}, got {value!r}")
    if kind is float and not _finite(value):
        raise UsageError(f"TrainConfig.{name} must be a finite number, got {value!r}")
    if kind is int and not INT64_MIN <= value <= INT64_MAX:
        raise UsageError(f"TrainConfig.{name} must fit in a 64-bit integer, got {value!r}")


def _finite(value: float | int) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = closest(name, sorted(known))
    return f"; did you mean {' or '.join(close)}?" if close else " such as schedule.lr or model.d_model"

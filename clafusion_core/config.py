"""One frozen config tree for a fusion run; each sub-config is the cache key of the stage it determines.

=============  ==========================================================  =============================
sub-config     determines                                                  flat names (CLI flags)
=============  ==========================================================  =============================
``probe``      the probe (fusion) batch                                    dataset, data_root, probe_size,
                                                                           probe_seed
``alignment``  unit activations (with ``probe``), cost matrix, DP          cost, activation, conv_features,
                                                                           pin_first, pin_last, mapping
``balancing``  the balanced pair                                           balance
``fusion``     the fused model: method, its options, weights               method, fusion_weight,
                                                                           inserted_weight, reference,
                                                                           weights (N models), + the
                                                                           method's option names
``repair``     statistics repair and BatchNorm reset                       repair, bn_reset
``finetune``   finetuning (of the fused model and the parents alike)       finetune_epochs, finetune_lr,
                                                                           optimizer, distill,
                                                                           distill_temperature,
                                                                           finetune_parents
=============  ==========================================================  =============================

A one-shot result is stale exactly when :meth:`FusionConfig.fusion_key` changes, and an alignment
when ``(probe, alignment)`` does: the app's caches and checks come from here, not from hand-kept
tuples. Every flat name is unique, so ``FusionConfig.from_flat(cost="cca", fusion_weight=0.3)`` and
``config.replace(...)`` take them directly; :meth:`to_dict` / :meth:`from_dict` round-trip the tree
through ``result.json`` and ``--config`` files (JSON or YAML).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import AlignmentError, FusionError
from .families import get_family
from .train import TrainConfig

INSERTED_WEIGHTS = ("deeper", "average")


@dataclass(frozen=True)
class ProbeConfig:
    dataset: str = "digits"
    data_root: str | None = None
    size: int | None = None            # None: the dataset's default (data.PROBE_SIZES)
    seed: int = 0


@dataclass(frozen=True)
class AlignmentConfig:
    cost: str = "linear_cka"
    activation: str = "post"           # "post" (after ReLU) or "pre"
    conv_features: str = "pool"        # conv maps: average over space or flatten
    pin_first: bool = True
    pin_last: bool = True
    mapping: tuple[tuple[int, ...], ...] | None = None   # a user's per-stage matching instead of the DP's

    def __post_init__(self):
        from .activations import CONV_MODES
        from .similarity import METRICS

        if self.cost not in METRICS:
            raise AlignmentError(f"Unknown cost metric '{self.cost}'; choose one of {METRICS}.")
        if self.activation not in ("pre", "post") or self.conv_features not in CONV_MODES:
            raise AlignmentError("Activations must be 'pre' or 'post' and conv features 'pool' or 'flatten'.")
        if self.mapping is not None:
            object.__setattr__(self, "mapping", tuple(tuple(int(a) for a in stage) for stage in self.mapping))


@dataclass(frozen=True)
class BalancingConfig:
    method: str = "add"
    identity_width: str = "deeper"     # add: an inserted identity as wide as the deeper model's unit, or its "input"

    def __post_init__(self):
        from .balancing import BALANCE_METHODS, IDENTITY_WIDTHS

        if self.method not in BALANCE_METHODS:
            raise AlignmentError(f"Unknown balancing '{self.method}'; choose one of {BALANCE_METHODS}.")
        if self.identity_width not in IDENTITY_WIDTHS:
            raise AlignmentError(f"Unknown identity width '{self.identity_width}'; choose one of {IDENTITY_WIDTHS}.")


def _default_options():
    from .otfusion import OTOptions

    return OTOptions()


@dataclass(frozen=True)
class MethodConfig:
    """The fusion method, its own options (``options_type`` of the method) and the parents' weights."""

    name: str = "ot"
    weight: float = 0.5                # s, the weight of model B (the reference)
    inserted: str = "deeper"           # at layers balancing inserted: keep the deeper model's layer, or "average"
    options: object = field(default_factory=_default_options)
    reference: int | None = None       # N models: the target's index (None: the first, or the deepest / shallowest)
    weights: tuple[float, ...] | None = None   # N models: their shares as given (normalised when used; None: equal)

    def __post_init__(self):
        from .methods import get_method

        method = get_method(self.name)
        if not isinstance(self.options, method.options_type):
            raise AlignmentError(f"The options of method '{self.name}' must be {method.options_type.__name__}.")
        if not 0.0 <= self.weight <= 1.0:
            raise AlignmentError("The fusion weight s must lie between 0 (all A) and 1 (all B).")
        if self.inserted not in INSERTED_WEIGHTS:
            raise AlignmentError(f"Unknown inserted-layer weight '{self.inserted}'; choose one of {INSERTED_WEIGHTS}.")
        if self.reference is not None and (isinstance(self.reference, bool) or not isinstance(self.reference, int)
                                           or self.reference < 0):
            raise AlignmentError(f"The reference must be a model's index from 0, not {self.reference}.")
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
            if not all(0 <= w < float("inf") for w in self.weights) or sum(self.weights) <= 0:
                raise AlignmentError("The fusion weights must be non-negative numbers, not all zero, e.g. 1,1,2.")


@dataclass(frozen=True)
class RepairConfig:
    statistics: bool = True            # REPAIR-style statistics repair (kept only if validation improves)
    bn_reset: bool = True              # recompute BatchNorm running statistics on training data


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 0
    lr: float = 0.01
    optimizer: str = "sgd"
    distill: float = 0.9               # weight of distillation from the parents' ensemble (0: labels only)
    temperature: float = 4.0
    parents: bool = False              # also finetune the parents alike (the fair baseline)
    clip_grad_norm: float = 1.0        # a fused model's first steps can blow up without it (0: off)


#: flat name → (sub-config, field). The method's option names are added per method (see ``_split``).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "dataset": ("probe", "dataset"), "data_root": ("probe", "data_root"), "probe_size": ("probe", "size"),
    "probe_seed": ("probe", "seed"),
    **{name: ("alignment", name) for name in ("cost", "activation", "conv_features", "pin_first", "pin_last",
                                                "mapping")},
    "balance": ("balancing", "method"), "identity_width": ("balancing", "identity_width"),
    "method": ("fusion", "name"), "fusion_weight": ("fusion", "weight"), "inserted_weight": ("fusion", "inserted"),
    "reference": ("fusion", "reference"), "weights": ("fusion", "weights"),
    "repair": ("repair", "statistics"), "bn_reset": ("repair", "bn_reset"),
    "finetune_epochs": ("finetune", "epochs"), "finetune_lr": ("finetune", "lr"), "optimizer": ("finetune", "optimizer"),
    "distill": ("finetune", "distill"), "distill_temperature": ("finetune", "temperature"),
    "finetune_parents": ("finetune", "parents"), "clip_grad_norm": ("finetune", "clip_grad_norm"),
}
SECTIONS = {"probe": ProbeConfig, "alignment": AlignmentConfig, "balancing": BalancingConfig,
            "fusion": MethodConfig, "repair": RepairConfig, "finetune": FinetuneConfig}


def flat_types() -> dict[str, object]:
    """Every flat name, the options of every registered method included, → its annotated type (e.g.
    ``int | None`` for ``probe_size``): what a text from a form or a link parses to."""
    from typing import get_type_hints

    from .methods import METHODS

    types = {name: get_type_hints(SECTIONS[section])[attribute] for name, (section, attribute) in FLAT_NAMES.items()}
    for method in METHODS.values():
        types.update(get_type_hints(method.options_type))
    top = get_type_hints(FusionConfig)
    return {**types, "seed": top["seed"], "device": top["device"]}


@dataclass(frozen=True)
class FusionConfig:
    """Everything that determines a fusion run (saved in ``result.json`` to rerun it)."""

    probe: ProbeConfig = field(default_factory=ProbeConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    balancing: BalancingConfig = field(default_factory=BalancingConfig)
    fusion: MethodConfig = field(default_factory=MethodConfig)
    repair: RepairConfig = field(default_factory=RepairConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        self.finetune_config()  # validates the finetuning settings

    # ------------------------------------------------------------------ flat names (CLI, app, benchmarks)

    @classmethod
    def from_flat(cls, **values) -> FusionConfig:
        """A config from flat names (``cost="cca"``, ``ground_metric="weights"``, ...); the rest default."""
        return cls().replace(**values)

    def replace(self, **values) -> FusionConfig:
        """This config with some flat names changed (a new method resets its options to the defaults,
        then takes the given option names)."""
        from .methods import get_method

        top = {k: values.pop(k) for k in ("seed", "device") if k in values}
        changes: dict[str, dict] = {}
        option_values = {}
        for name, value in values.items():
            if name in FLAT_NAMES:
                section, attribute = FLAT_NAMES[name]
                changes.setdefault(section, {})[attribute] = value
            else:
                option_values[name] = value
        fusion = changes.get("fusion", {})
        method = get_method(fusion.get("name", self.fusion.name))
        options = self.fusion.options if method.name == self.fusion.name else method.options_type()
        known = {f.name for f in fields(method.options_type)}
        unknown = sorted(set(option_values) - known)
        if unknown:
            raise FusionError(f"Unknown setting(s) {unknown} for fusion method '{method.name}'.")
        fusion["options"] = replace(options, **option_values)
        changes["fusion"] = fusion
        sections = {section: replace(getattr(self, section), **attrs) for section, attrs in changes.items()}
        return replace(self, **sections, **top)

    def flat(self) -> dict:
        """Every setting by its flat name (the inverse of :meth:`from_flat`)."""
        out = {name: getattr(getattr(self, section), attribute) for name, (section, attribute) in FLAT_NAMES.items()}
        out.update(asdict(self.fusion.options), seed=self.seed, device=self.device)
        return out

    def ignored(self, family: str) -> set[str]:
        """The flat names that change nothing in a run with these settings on models of ``family`` (the
        app disables their widgets): the inserted-layer rule without identity layers, conv-map choices for
        MLPs, the temperature without distillation, and the options the method's settings bypass."""
        unused = set(self.fusion.options.ignored())
        if self.balancing.method != "add":
            unused |= {"inserted_weight", "identity_width"}
        if not get_family(family).is_conv:   # no feature maps
            unused |= {"conv_features", "ground_conv_features"}
        if self.finetune.distill == 0:
            unused.add("distill_temperature")
        return unused

    # --------------------------------------------------------------------------- stage keys and views

    def fusion_key(self) -> FusionConfig:
        """This config without its finetuning settings: equal keys give the same one-shot fusion (the app's
        "is this result stale?" check)."""
        return replace(self, finetune=FinetuneConfig())

    def options_for(self, method: str):
        """The options of fusion method ``method``: this config's when it is the chosen one, else its defaults."""
        from .methods import get_method

        return self.fusion.options if method == self.fusion.name else get_method(method).options_type()

    def activations_key(self) -> tuple:
        """What the unit activations depend on (the app caches them under it; the metric is not in it)."""
        return self.probe, self.alignment.activation, self.alignment.conv_features

    def finetune_config(self) -> TrainConfig:
        """The training settings of a finetune, shared by the fused model and the parents' fair baseline."""
        f = self.finetune
        return TrainConfig(epochs=f.epochs, lr=f.lr, optimizer=f.optimizer, seed=self.seed, distill=f.distill,
                           temperature=f.temperature, clip_grad_norm=f.clip_grad_norm)

    # --------------------------------------------------------------------------------- files and JSON

    def to_dict(self) -> dict:
        """The nested config as plain JSON values (``config`` in ``result.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FusionConfig:
        """The inverse of :meth:`to_dict`; missing keys take their defaults."""
        from .methods import get_method

        if not isinstance(data, dict):
            raise FusionError("A run config must be a mapping of sections (probe, alignment, fusion, ...).")
        unknown = sorted(set(data) - set(SECTIONS) - {"seed", "device"})
        if unknown:
            raise FusionError(f"Unknown section(s) {unknown} in the run config; the sections are "
                              f"{sorted(SECTIONS)}, seed and device.")
        sections = {}
        for name, kind in SECTIONS.items():
            values = dict(data.get(name) or {})
            try:
                if name == "fusion":
                    method = get_method(values.get("name", "ot"))
                    values["options"] = method.options_type(**(values.get("options") or {}))
                sections[name] = kind(**values)
            except TypeError as error:
                raise FusionError(f"The '{name}' section of the run config has an unknown setting ({error}).") from None
        return cls(**sections, **{k: data[k] for k in ("seed", "device") if k in data})

    @classmethod
    def load(cls, path: str | Path) -> FusionConfig:
        """A run config from a JSON or YAML file (``--config FILE``); a ``result.json`` works too."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError:
            raise FusionError(f"Cannot read the run config {path}; check the path.") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as error:  # any parse error of a user's file is one sentence
            raise FusionError(f"{path} is not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                              f"({type(error).__name__}); fix the file.") from None
        if isinstance(data, dict) and "config" in data and isinstance(data["config"], dict):
            data = data["config"]   # a result.json: rerun what it recorded
        return cls.from_dict(data)

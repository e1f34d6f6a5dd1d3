"""Every session-state key the app uses, in one place, and the shared choices built from them.

Two kinds of keys:

* **widget keys** (:data:`WIDGET_DEFAULTS`) — the value of a widget of that key; every run-config setting
  is one, under its flat name. :func:`init` (called by the router in ``app.py`` on every run, before any
  page) gives each its default once, so every page can read every choice even before the page owning the
  widget was opened; the widgets use ``persist_state="session"``, so a value survives visits to pages that
  do not show the widget;
* **plain keys** — objects the pages store: the networks chosen (:class:`Choice`), the bytes of the
  uploaded checkpoints, the what-if matching and the last fusion result.

Pages read the choices through the functions below (``choice()``, ``alignment_config()``,
``fusion_config()``, ``override()``, ``result()``) and never spell a key themselves; the URL's fields are
drawn from the same keys.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from clafusion_core import otfusion, zoo
from clafusion_core.activations import CONV_MODES
from clafusion_core.balancing import BALANCE_METHODS, IDENTITY_WIDTHS
from clafusion_core.config import FLAT_NAMES, INSERTED_WEIGHTS, flat_types
from clafusion_core.data import DATASETS
from clafusion_core.devices import DEVICES
from clafusion_core.errors import FusionError
from clafusion_core.interpolation import GROUPINGS, IMPORTANCES
from clafusion_core.many import ManyResult
from clafusion_core.methods import METHODS
from clafusion_core.pipeline import FusionConfig, FusionResult
from clafusion_core.similarity import METRICS
from clafusion_core.train import OPTIMIZERS

# ------------------------------------------------------------------------------ the run config's keys
# Every setting of the library's run config has one session key: its flat name (``FusionConfig.flat()``,
# the options of every registered method included). A widget of a setting uses that key, the URL that
# name, and the config is built from them: a new config field is in the app's state and links at once.
CHOICE_NAMES = ("dataset", "data_root", "mapping")   # from the networks chosen and the what-if matching
CONFIG_DEFAULTS: dict[str, object] = {}
for _method in METHODS:
    CONFIG_DEFAULTS.update(FusionConfig.from_flat(method=_method).flat())
CONFIG_DEFAULTS.update(FusionConfig().flat())
CONFIG_NAMES = tuple(name for name in CONFIG_DEFAULTS if name not in CHOICE_NAMES)
OPTION_NAMES = {name: method for method in METHODS for name in CONFIG_DEFAULTS
                if name in FusionConfig.from_flat(method=method).flat() and name not in FLAT_NAMES
                and name not in ("seed", "device")}     # a fusion method's option → that method
APP_DEFAULTS = {"finetune_epochs": 5}               # where the app starts otherwise than the library
AUTO = "auto"   # a setting left to the library (None in the config): widgets show no selection for None
OPTIONAL = {name for name, kind in flat_types().items() if type(None) in typing.get_args(kind)}


def _held(name: str, value: object) -> object:
    """A config value as the session holds it (None, for a setting that may be None, as :data:`AUTO`)."""
    return AUTO if value is None and name in OPTIONAL else value


def _given(name: str, value: object) -> object:
    """A session value as the config takes it (the inverse of :func:`_held`)."""
    return None if name in OPTIONAL and value == AUTO else value


COST, PROBE_SIZE, ACTIVATION, CONV_FEATURES = "cost", "probe_size", "activation", "conv_features"
PIN_FIRST, PIN_LAST = "pin_first", "pin_last"
BALANCE, METHOD, INSERTED_WEIGHT, FUSION_WEIGHT = "balance", "method", "inserted_weight", "fusion_weight"
IDENTITY_WIDTH = "identity_width"
GROUND_METRIC, GROUND_ACTIVATION, GROUND_CONV_FEATURES = "ground_metric", "ground_activation", "ground_conv_features"
GROUND_ACTIVATION_CHOICE = "ground_activation_choice"
SOLVER, SINKHORN_REG = "solver", "sinkhorn_reg"
INTERP_SIZE, INTERP_GROUPING, INTERP_IMPORTANCE = "fusion_size", "grouping", "importance"
REPAIR, BN_RESET, DEVICE = "repair", "bn_reset", "device"
FT_EPOCHS, FT_LR, FT_OPTIMIZER, FT_PARENTS = "finetune_epochs", "finetune_lr", "optimizer", "finetune_parents"
FT_DISTILL, FT_TEMPERATURE, FT_CLIP = "distill", "distill_temperature", "clip_grad_norm"
SEED = "seed"
REFERENCE, WEIGHTS = "reference", "weights"   # N networks: the target (auto: the library's rule), the shares

# --------------------------------------------------------------------------------- the other widgets
SOURCE_KIND = "source_kind"        # "demo" | "set" | "upload" | "paths"
DEMO_KEY = "demo_key"              # a key of zoo.DEMO_PAIRS
SET_KEY = "set_key"                # a key of zoo.DEMO_SETS
DATASET = "dataset"                # for uploads / paths (a demo pair brings its own)
DATA_ROOT = "data_root"
MAX_NETWORKS = 6
NETWORKS = "networks"              # how many upload / path slots Home shows (2 to MAX_NETWORKS)
SLOTS = "abcdef"[:MAX_NETWORKS]    # each slot's letter (its URL names: a, arch_a, ...)
ARCH_KEYS = [f"arch_{slot}" for slot in SLOTS]    # optional arch specs for .pt files whose arch cannot be inferred
PATH_KEYS = [f"path_{slot}" for slot in SLOTS]
UPLOAD_KEYS = [f"upload_{slot}" for slot in SLOTS]   # file_uploader widgets (not re-assignable)
WEIGHT_KEYS = [f"weight_{slot}" for slot in SLOTS]   # N networks: each one's weight (mirrored in WEIGHTS)
VIEW = "view_network"              # N networks: the one the pairwise views show against the target
COMPARE = "compare_metrics"
PLAN_GROUP = "plan_group"
HEATMAP = "align_heatmap"          # the clickable cost heatmap (its selection state)
CMP_POINTS = "cmp_points"          # Compare page: points per barrier curve
CMP_EPOCHS = "cmp_epochs"          # Compare page: the short finetune every method gets

#: the options of every widget that offers a fixed list: the widget and a link's check both read them
OPTIONS: dict[str, tuple] = {
    COST: tuple(METRICS),
    PROBE_SIZE: (AUTO, 100, 200, 500, 1000, 2000, 5000),     # auto: the dataset's default
    ACTIVATION: ("post", "pre"), CONV_FEATURES: tuple(CONV_MODES),
    BALANCE: BALANCE_METHODS, METHOD: tuple(METHODS), INSERTED_WEIGHT: INSERTED_WEIGHTS, GROUND_METRIC: otfusion.GROUND_METRICS,
    GROUND_ACTIVATION: otfusion.GROUND_ACTIVATIONS, GROUND_CONV_FEATURES: otfusion.GROUND_CONV_FEATURES,
    GROUND_ACTIVATION_CHOICE: otfusion.GROUND_ACTIVATION_CHOICES, IDENTITY_WIDTH: IDENTITY_WIDTHS,
    SOLVER: otfusion.SOLVERS,
    SINKHORN_REG: (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
    INTERP_SIZE: (200, 500, 1000, 2000, 4000), INTERP_GROUPING: GROUPINGS, INTERP_IMPORTANCE: IMPORTANCES,
    DEVICE: DEVICES, FT_OPTIMIZER: OPTIMIZERS,
    FT_LR: (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), FT_TEMPERATURE: (1.0, 2.0, 4.0, 8.0),
    FT_CLIP: (0.0, 0.5, 1.0, 2.0, 5.0),
    CMP_POINTS: (3, 5, 7, 11, 21),
}
#: the (min, max) of every number input
LIMITS: dict[str, tuple[int, int]] = {FT_EPOCHS: (1, 200), CMP_EPOCHS: (0, 20), SEED: (0, 2**32 - 1)}

WIDGET_DEFAULTS: dict[str, object] = {
    **{name: _held(name, CONFIG_DEFAULTS[name]) for name in CONFIG_NAMES}, **APP_DEFAULTS,
    SOURCE_KIND: "demo", DEMO_KEY: zoo.DEFAULT_PAIR, SET_KEY: next(iter(zoo.DEMO_SETS)),
    DATASET: CONFIG_DEFAULTS["dataset"], DATA_ROOT: "", NETWORKS: 2, **dict.fromkeys(ARCH_KEYS + PATH_KEYS, ""),
    COMPARE: False, VIEW: 1, CMP_POINTS: 11, CMP_EPOCHS: 2,
}

# ---------------------------------------------------------------------------------------- plain keys
CHOICE = "choice"                  # Choice: the networks and the dataset in use
UPLOADED = "uploaded_bytes"        # {sha256: bytes} of the uploaded checkpoints in use
OVERRIDE = "override"              # (choice id, per-stage matching) of the what-if (two networks), or absent
OVERRIDE_REV = "override_rev"      # bumped when the matching changes outside its widgets
WEIGHTS_REFUSED = "weights_refused"  # the weights were all set to zero (and put back)
RESULT = "fusion_result"           # (choice id, FusionResult or many.ManyResult) of the last fusion run


@dataclass(frozen=True)
class ModelRef:
    """One network of the choice: where it comes from and the key its caches use."""

    kind: str                  # "demo" | "set" | "upload" | "path"
    name: str                  # what the user sees (pair title + A/B, a file name, a path)
    key: str                   # cache key: "demo:<pair>:0", "set:<set>:2", the upload's sha256, "path:<abs>:<mtime>:<size>"
    arch: str | None = None    # the user's arch spec, for .pt files whose arch cannot be inferred
    demo: str | None = None    # the demo pair or set (kinds "demo", "set")
    slot: int = 0              # its place among the networks given, from 0
    path: str | None = None    # the local file (kind "path")


@dataclass(frozen=True)
class Choice:
    """The networks (two or more, in the order given) and the dataset every page works on."""

    kind: str                  # "demo" | "set" | "upload" | "paths"
    refs: tuple[ModelRef, ...]
    dataset: str
    data_root: str | None
    label: str

    @property
    def id(self) -> str:
        return "|".join([*(r.key for r in self.refs), self.dataset, self.data_root or ""])

    @property
    def many(self) -> bool:
        """More than two networks: fused onto a target with weights (``many.fuse_many``)."""
        return len(self.refs) > 2


def demo_choice(key: str = zoo.DEFAULT_PAIR) -> Choice:
    pair = zoo.DEMO_PAIRS[key]
    refs = tuple(ModelRef("demo", f"{pair.title} — {'AB'[slot]} ({arch})", f"demo:{key}:{slot}", demo=key, slot=slot)
                 for slot, arch in enumerate((pair.arch_a, pair.arch_b)))
    return Choice("demo", refs, pair.dataset, None, f"demo pair “{pair.title}”")


def demo_set_choice(key: str) -> Choice:
    """The networks of a demo set (:data:`zoo.DEMO_SETS`)."""
    demo = zoo.DEMO_SETS[key]
    refs = tuple(ModelRef("set", f"{demo.title} — {slot + 1} ({arch})", f"set:{key}:{slot}", demo=key, slot=slot)
                 for slot, arch in enumerate(demo.archs))
    return Choice("set", refs, demo.dataset, None, f"demo set “{demo.title}”")


def init() -> None:
    """Give every widget key its default the first time (call first, on every run)."""
    for key, default in WIDGET_DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = default


def choice() -> tuple[Choice, bool]:
    """The chosen networks, and whether the default demo pair stands in for a choice never made."""
    pair = st.session_state.get(CHOICE)
    if pair is None:
        return demo_choice(), True
    return pair, False


def set_choice(pair: Choice, uploaded: dict[str, bytes] | None = None) -> None:
    """Make ``pair`` the networks every page uses (results of other networks no longer show)."""
    st.session_state[CHOICE] = pair
    st.session_state[UPLOADED] = dict(uploaded or {})


def data_root() -> str | None:
    """The dataset folder given for uploads and local paths (none for the built-in digits)."""
    root = st.session_state[DATA_ROOT].strip() if st.session_state[DATASET] != "digits" else ""
    return str(Path(root).expanduser()) if root else None


def uploaded_bytes(key: str) -> bytes | None:
    return st.session_state.get(UPLOADED, {}).get(key)


def _section(name: str) -> str:
    """The part of the run config a flat name belongs to (a method's option names: "fusion")."""
    return FLAT_NAMES[name][0] if name in FLAT_NAMES else "run" if name in ("seed", "device") else "fusion"


def _values(*sections: str) -> dict[str, object]:
    """The session's settings of those config sections (of the fusion options, the chosen method's only)."""
    method = st.session_state[METHOD]
    return {name: _given(name, st.session_state[name]) for name in CONFIG_NAMES
            if _section(name) in sections and OPTION_NAMES.get(name, method) == method}


def alignment_config(pair: Choice) -> FusionConfig:
    """The settings that determine the cost matrix and the DP alignment (nothing else varies)."""
    return FusionConfig.from_flat(dataset=pair.dataset, data_root=pair.data_root, **_values("probe", "alignment"))


def fusion_config(pair: Choice) -> FusionConfig:
    """Every setting of a one-shot fusion (the library's defaults for finetuning, which the Finetune page
    sets), with the what-if matching if there is one; only the chosen method's options apply. More than
    two networks take the target and weights, two the fusion weight s."""
    values = _values("probe", "alignment", "balancing", "fusion", "repair", "run")
    values[WEIGHTS] = network_weights(len(pair.refs)) if pair.many else None
    if not pair.many:
        values[REFERENCE] = None
    return FusionConfig.from_flat(dataset=pair.dataset, data_root=pair.data_root, mapping=override(pair), **values)


def pair_config(pair: Choice) -> FusionConfig:
    """The settings of the pairwise views (the Compare page): the pair's, or for more than two networks the
    target's and the viewed network's, without the N-network target and weights."""
    return fusion_config(pair).replace(reference=None, weights=None)


def network_weights(count: int) -> tuple[float, ...] | None:
    """The weights of ``count`` networks (1 where none was given); None when they are all equal."""
    given = _given(WEIGHTS, st.session_state[WEIGHTS]) or ()
    values = tuple(float(given[k]) if k < len(given) else 1.0 for k in range(count))
    return None if len(set(values)) == 1 else values


def weights_changed(count: int) -> None:
    """The weight widgets' ``on_change``: mirror them in :data:`WEIGHTS` (before the run, so the URL has them).
    All zero is refused: the widgets go back to the weights in use and :data:`WEIGHTS_REFUSED` says so."""
    values = tuple(float(st.session_state.get(WEIGHT_KEYS[k], 1.0)) for k in range(count))
    if not any(values):
        st.session_state[WEIGHTS_REFUSED] = True
        for key, value in zip(WEIGHT_KEYS, network_weights(count) or (1.0,) * count):
            st.session_state[key] = value
        return
    st.session_state[WEIGHTS] = AUTO if len(set(values)) == 1 else values


def target(models: list, allowed: list[int]) -> int:
    """The target among ``models``: the chosen one if balancing allows it (``allowed``, from
    ``many.allowed_references``), else the library's default; a choice not allowed falls back to auto."""
    chosen = _given(REFERENCE, st.session_state[REFERENCE])
    if chosen is not None and chosen not in allowed:
        st.session_state[REFERENCE] = AUTO
        chosen = None
    return allowed[0] if chosen is None else chosen


def viewed(count: int, target_index: int) -> int:
    """The network the pairwise views (heatmap, balancing, plans, Compare) show against the target."""
    view = st.session_state[VIEW]
    if not 0 <= view < count or view == target_index:
        st.session_state[VIEW] = view = next(k for k in range(count) if k != target_index)
    return view


def finetune_settings() -> dict[str, object]:
    """The Finetune page's settings, as :func:`clafusion_core.pipeline.finetune_result` takes them."""
    values = _values("finetune")
    return {"epochs": int(values[FT_EPOCHS]), "lr": float(values[FT_LR]), "optimizer": values[FT_OPTIMIZER],
            "parents": bool(values[FT_PARENTS]), "distill": float(values[FT_DISTILL]),
            "temperature": float(values[FT_TEMPERATURE]), "clip_grad_norm": float(values[FT_CLIP])}


def ignored(pair: Choice, family: str) -> set[str]:
    """The settings that change nothing under the others (their widgets are disabled): the library's
    rule (:meth:`FusionConfig.ignored`), the other fusion methods' options, and for two networks the target
    and weights, for more the pairwise weight s and the parents' baseline finetune."""
    config = fusion_config(pair).replace(**_values("finetune"))
    by_count = {FUSION_WEIGHT, FT_PARENTS} if pair.many else {REFERENCE, WEIGHTS}
    return config.ignored(family) | (set(CONFIG_NAMES) - set(config.flat())) | by_count


def balance_options(methods: tuple[str, ...]) -> tuple[str, ...]:
    """The balancings the models allow (``balancing.balance_methods``); a choice they do not allow (e.g.
    from a link made for MLPs) falls back to the first."""
    if st.session_state[BALANCE] not in methods:
        st.session_state[BALANCE] = methods[0]
    return methods


def override(pair: Choice) -> tuple[tuple[int, ...], ...] | None:
    """The user's per-stage matching for this pair, or None to use the DP's (always, for more than two
    networks: one matching cannot serve every pairing with the target)."""
    stored = st.session_state.get(OVERRIDE)
    if stored and stored[0] == pair.id and not pair.many:
        return stored[1]
    return None


def set_override(pair: Choice, mapping: list[list[int]] | tuple | None, *, from_widget: bool = False) -> None:
    """Store (or with None, drop) the what-if matching; ``from_widget`` keeps the widgets as they are."""
    if mapping is None:
        st.session_state.pop(OVERRIDE, None)
    else:
        st.session_state[OVERRIDE] = (pair.id, tuple(tuple(int(a) for a in stage) for stage in mapping))
    if not from_widget:
        st.session_state[OVERRIDE_REV] = st.session_state.get(OVERRIDE_REV, 0) + 1


def override_rev() -> int:
    return st.session_state.get(OVERRIDE_REV, 0)


def same_fusion(a: FusionConfig, b: FusionConfig) -> bool:
    """Whether two configs fuse the same way (finetuning settings aside; the library decides which)."""
    return a.fusion_key() == b.fusion_key()


def result(pair: Choice) -> FusionResult | ManyResult | None:
    """The last fusion result of these networks (a pair's or N networks'), or None."""
    stored = st.session_state.get(RESULT)
    if stored and stored[0] == pair.id:
        return stored[1]
    return None


def store_result(pair: Choice, fusion: FusionResult | ManyResult) -> None:
    st.session_state[RESULT] = (pair.id, fusion)


# ------------------------------------------------------------------------- shareable URL (query string)
# The settings that determine a result are written to the URL's query string on every run and read
# back when a session starts, so a link reproduces a setup: the networks chosen (demo pair or set, local
# paths, dataset), every run-config setting under its flat name, and the Compare page's curve settings.
# Only values that differ from the defaults are written (short links). Uploaded checkpoints cannot
# travel in a URL; demo pairs and local paths do.
URL_RESTORED = "url_restored"      # plain key: this session's URL has been read
URL_IGNORED = "url_ignored"        # plain key: query-string entries that could not be used
MATCH = "match"                    # query-string name of the what-if matching: stages "_", units "-"
CHOICE_FIELDS: dict[str, tuple[str, object]] = {
    "src": (SOURCE_KIND, str), "pair": (DEMO_KEY, str), "set": (SET_KEY, str),
    **{slot: (key, str) for slot, key in zip(SLOTS, PATH_KEYS)},
    **{f"arch_{slot}": (key, str) for slot, key in zip(SLOTS, ARCH_KEYS)},
    "dataset": (DATASET, str), "root": (DATA_ROOT, str)}
CHOICE_OPTIONS = {SOURCE_KIND: ("demo", "set", "paths"), DEMO_KEY: tuple(zoo.DEMO_PAIRS), SET_KEY: tuple(zoo.DEMO_SETS),
                  DATASET: tuple(DATASETS)}
#: the choice fields each source writes (the others' stay out of the link; demos bring their own dataset)
SOURCE_FIELDS = {"demo": ("pair",), "set": ("set",),
                 "paths": (*SLOTS, *(f"arch_{slot}" for slot in SLOTS), "dataset", "root")}


#: the short names links used before the fields came from the config (read, never written: a frozen list)
LEGACY_NAMES = {"probe": PROBE_SIZE, "act": ACTIVATION, "conv": CONV_FEATURES, "ground": GROUND_METRIC,
                "ground_act": GROUND_ACTIVATION, "ground_conv": GROUND_CONV_FEATURES, "inserted": INSERTED_WEIGHT,
                "reg": SINKHORN_REG, "s": FUSION_WEIGHT}


def url_fields() -> dict[str, tuple[str, object]]:
    """Query-string name → (session key, the type its text parses to): the networks chosen, every
    run-config setting (its flat name and annotated type, from the library), the Compare page's."""
    config_types = flat_types()
    return {**CHOICE_FIELDS, **{name: (name, config_types[name]) for name in CONFIG_NAMES},
            "points": (CMP_POINTS, int), "cmp_epochs": (CMP_EPOCHS, int)}


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)


def _parse(text: str, kind: object) -> object:
    """The session value ``text`` stands for under the type ``kind`` (``int | None``: "auto" is :data:`AUTO`);
    ValueError when it stands for none."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if text == AUTO and type(None) in typing.get_args(kind):
            return AUTO
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if kind is bool:
        if text not in ("0", "1"):
            raise ValueError(text)
        return text == "1"
    if typing.get_origin(kind) is tuple:          # e.g. the weights: "1,1,2"
        return tuple(typing.get_args(kind)[0](part) for part in text.split(","))
    return kind(text)


def _check(key: str, value: object) -> None:
    """ValueError unless ``value`` is one the widget of ``key`` offers and, for a run-config setting, the
    library accepts."""
    allowed = OPTIONS.get(key) or CHOICE_OPTIONS.get(key)
    low, high = LIMITS.get(key, (None, None))
    if allowed is not None and value not in allowed or low is not None and not low <= value <= high:
        raise ValueError(value)
    if key in CONFIG_NAMES:
        owner = {"method": OPTION_NAMES[key]} if key in OPTION_NAMES else {}
        try:
            FusionConfig.from_flat(**owner, **{key: _given(key, value)})
        except (FusionError, TypeError) as error:
            raise ValueError(value) from error


def url_state() -> dict[str, str]:
    """The query string for the current session: every URL setting that differs from its default,
    the pair always, and the what-if matching when there is one."""
    source, params = st.session_state.get(SOURCE_KIND), {}
    hidden = {name for kind, names in SOURCE_FIELDS.items() if kind != source for name in names}
    for name, (key, _) in url_fields().items():
        value = st.session_state.get(key, WIDGET_DEFAULTS[key])
        if name not in hidden and (value != WIDGET_DEFAULTS[key] or name in ("src", *SOURCE_FIELDS["demo"],
                                                                              *SOURCE_FIELDS["set"])):
            params[name] = _encode(value)
    pair = st.session_state.get(CHOICE)
    matching = override(pair) if pair is not None else None
    if matching is not None:
        params[MATCH] = "_".join("-".join(str(a) for a in stage) for stage in matching)
    return params


def restore_url_state(params: dict[str, str]) -> list[str]:
    """Set the session from a query string (before any widget is drawn); returns the entries ignored."""
    fields, ignored = url_fields(), []
    for old, name in LEGACY_NAMES.items():
        if old in params and name not in params:
            params = {**params, name: params[old]}
        params = {k: v for k, v in params.items() if k != old}
    for name, text in params.items():
        if name not in fields:
            if name != MATCH:
                ignored.append(name)
            continue
        key, kind = fields[name]
        try:
            value = _parse(text, kind)
            _check(key, value)
        except ValueError:
            ignored.append(name)
        else:
            st.session_state[key] = value
    paths = [k for k, slot in enumerate(SLOTS) if slot in params and slot not in ignored]
    st.session_state[NETWORKS] = max(2, paths[-1] + 1) if paths else 2
    source = st.session_state[SOURCE_KIND]
    if source == "set" and "set" in params and "set" not in ignored:
        set_choice(demo_set_choice(st.session_state[SET_KEY]))
    if source == "demo" and "pair" in params and "pair" not in ignored:
        set_choice(demo_choice(st.session_state[DEMO_KEY]))
        if MATCH in params:
            try:
                stages = [[int(a) for a in stage.split("-") if a] for stage in params[MATCH].split("_")]
            except ValueError:
                ignored.append(MATCH)
            else:
                set_override(st.session_state[CHOICE], stages)
    return ignored


def sync_url() -> None:
    """Read the URL once per session (a shared link), then keep it up to date on every run."""
    if URL_RESTORED not in st.session_state:
        st.session_state[URL_RESTORED] = True
        st.session_state[URL_IGNORED] = restore_url_state(st.query_params.to_dict())
    params = url_state()
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)


# ----------------------------------------------------------------------------------- Compare page results
CMP_RESULTS = "cmp_results"        # plain key: {section: (what determined it, the result)}


def compare_result(section: str, determinant: tuple):
    """The Compare page's last result of ``section`` if it was computed for ``determinant``, else None."""
    stored = st.session_state.get(CMP_RESULTS, {}).get(section)
    return stored[1] if stored is not None and stored[0] == determinant else None


def store_compare_result(section: str, determinant: tuple, value) -> None:
    st.session_state.setdefault(CMP_RESULTS, {})[section] = (determinant, value)

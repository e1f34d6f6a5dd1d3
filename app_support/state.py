"""Every session-state key the app uses, in one place, and the shared choices built from them.

Two kinds of keys:

* **widget keys** (:data:`WIDGET_DEFAULTS`) — the value of a widget of that key. :func:`init` (called by
  ``app.py`` on every run, before any page) gives each its default once, so every page can read every
  choice even before the page owning the widget was opened; the widgets use
  ``persist_state="session"``, so a value survives visits to pages that do not show the widget;
* **plain keys** — objects the pages store: the chosen pair (:class:`PairChoice`), the bytes of the
  uploaded checkpoints, the what-if matching and the last fusion result.

Pages read the choices through the functions below (``choice()``, ``alignment_config()``,
``fusion_config()``, ``override()``, ``result()``) and never spell a key themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from clafusion_core import zoo
from clafusion_core.interpolation import InterpOptions
from clafusion_core.pipeline import FusionConfig, FusionResult

_DEFAULT = FusionConfig().flat()

# --------------------------------------------------------------------------------------- widget keys
SOURCE_KIND = "source_kind"        # "demo" | "upload" | "paths"
DEMO_KEY = "demo_key"              # a key of zoo.DEMO_PAIRS
DATASET = "dataset"                # for uploads / paths (a demo pair brings its own)
DATA_ROOT = "data_root"
ARCH_A, ARCH_B = "arch_a", "arch_b"    # optional arch specs for .pt files whose arch cannot be inferred
PATH_A, PATH_B = "path_a", "path_b"
UPLOAD_A, UPLOAD_B = "upload_a", "upload_b"   # file_uploader widgets (not re-assignable)

COST = "cost"
PROBE_SIZE = "probe_size"
PROBE_SIZES = [None, 100, 200, 500, 1000, 2000, 5000]   # None: the dataset's default
ACTIVATION = "activation"
CONV_FEATURES = "conv_features"
PIN_FIRST = "pin_first"
PIN_LAST = "pin_last"
COMPARE = "compare_metrics"

BALANCE = "balance"
METHOD = "method"
GROUND_METRIC = "ground_metric"
GROUND_ACTIVATION = "ground_activation"
GROUND_CONV_FEATURES = "ground_conv_features"
INSERTED_WEIGHT = "inserted_weight"
SOLVER = "solver"
SINKHORN_REG = "sinkhorn_reg"
FUSION_WEIGHT = "fusion_weight"
DEVICE = "device"
REPAIR = "repair"
BN_RESET = "bn_reset"
PLAN_GROUP = "plan_group"
INTERP_SIZE = "interp_fusion_size"
INTERP_GROUPING = "interp_grouping"
INTERP_IMPORTANCE = "interp_importance"

#: option name of each fusion method → the widget key holding it
METHOD_WIDGETS: dict[str, dict[str, str]] = {
    "ot": {"ground_metric": GROUND_METRIC, "solver": SOLVER, "sinkhorn_reg": SINKHORN_REG,
           "ground_activation": GROUND_ACTIVATION, "ground_conv_features": GROUND_CONV_FEATURES},
    "interp": {"fusion_size": INTERP_SIZE, "grouping": INTERP_GROUPING, "importance": INTERP_IMPORTANCE},
}

FT_EPOCHS = "ft_epochs"
FT_LR = "ft_lr"
FT_OPTIMIZER = "ft_optimizer"
FT_PARENTS = "ft_parents"
FT_DISTILL = "ft_distill"
FT_TEMPERATURE = "ft_temperature"

HEATMAP = "align_heatmap"          # the clickable cost heatmap (its selection state)

WIDGET_DEFAULTS: dict[str, object] = {
    SOURCE_KIND: "demo", DEMO_KEY: zoo.DEFAULT_PAIR, DATASET: _DEFAULT["dataset"], DATA_ROOT: "",
    ARCH_A: "", ARCH_B: "", PATH_A: "", PATH_B: "",
    COST: _DEFAULT["cost"], PROBE_SIZE: _DEFAULT["probe_size"], ACTIVATION: _DEFAULT["activation"],
    CONV_FEATURES: _DEFAULT["conv_features"], PIN_FIRST: _DEFAULT["pin_first"], PIN_LAST: _DEFAULT["pin_last"],
    COMPARE: False,
    BALANCE: _DEFAULT["balance"], METHOD: _DEFAULT["method"], GROUND_METRIC: _DEFAULT["ground_metric"],
    GROUND_ACTIVATION: _DEFAULT["ground_activation"], GROUND_CONV_FEATURES: _DEFAULT["ground_conv_features"],
    INSERTED_WEIGHT: _DEFAULT["inserted_weight"], SOLVER: _DEFAULT["solver"],
    SINKHORN_REG: _DEFAULT["sinkhorn_reg"], FUSION_WEIGHT: _DEFAULT["fusion_weight"], DEVICE: _DEFAULT["device"],
    REPAIR: _DEFAULT["repair"], BN_RESET: _DEFAULT["bn_reset"],
    INTERP_SIZE: InterpOptions().fusion_size, INTERP_GROUPING: InterpOptions().grouping,
    INTERP_IMPORTANCE: InterpOptions().importance,
    FT_EPOCHS: 5, FT_LR: _DEFAULT["finetune_lr"], FT_OPTIMIZER: _DEFAULT["optimizer"], FT_PARENTS: False,
    FT_DISTILL: _DEFAULT["distill"], FT_TEMPERATURE: _DEFAULT["distill_temperature"],
}

# ---------------------------------------------------------------------------------------- plain keys
PAIR = "pair"                      # PairChoice: the two networks and the dataset in use
UPLOADED = "uploaded_bytes"        # {sha256: bytes} of the uploaded checkpoints in use
OVERRIDE = "override"              # (pair id, per-stage matching) of the what-if, or absent
OVERRIDE_REV = "override_rev"      # bumped when the matching changes outside its widgets
RESULT = "fusion_result"           # (pair id, FusionResult) of the last fusion run
LAST_CLICK = "last_heatmap_click"  # the heatmap cell last applied, so a selection is applied once


@dataclass(frozen=True)
class ModelRef:
    """One network of the chosen pair: where it comes from and the key its caches use."""

    kind: str                  # "demo" | "upload" | "path"
    name: str                  # what the user sees (pair title + A/B, a file name, a path)
    key: str                   # cache key: "demo:<pair>:a", the upload's sha256, "path:<abs>:<mtime>:<size>"
    arch: str | None = None    # the user's arch spec, for .pt files whose arch cannot be inferred
    demo: str | None = None    # the demo pair (kind "demo")
    slot: int = 0              # 0 = first network of the pair, 1 = second
    path: str | None = None    # the local file (kind "path")


@dataclass(frozen=True)
class PairChoice:
    """The two networks and the dataset every page works on."""

    kind: str                  # "demo" | "upload" | "paths"
    refs: tuple[ModelRef, ModelRef]
    dataset: str
    data_root: str | None
    label: str

    @property
    def id(self) -> str:
        return "|".join([*(r.key for r in self.refs), self.dataset, self.data_root or ""])


def demo_choice(key: str = zoo.DEFAULT_PAIR) -> PairChoice:
    pair = zoo.DEMO_PAIRS[key]
    refs = tuple(ModelRef("demo", f"{pair.title} — {'AB'[slot]} ({arch})", f"demo:{key}:{slot}", demo=key, slot=slot)
                 for slot, arch in enumerate((pair.arch_a, pair.arch_b)))
    return PairChoice("demo", refs, pair.dataset, None, f"demo pair “{pair.title}”")  # type: ignore[arg-type]


def init() -> None:
    """Give every widget key its default the first time (call first, on every run)."""
    for key, default in WIDGET_DEFAULTS.items():
        if key not in st.session_state:
            st.session_state[key] = default


def choice() -> tuple[PairChoice, bool]:
    """The chosen pair, and whether it is the default demo pair standing in for a choice never made."""
    pair = st.session_state.get(PAIR)
    if pair is None:
        return demo_choice(), True
    return pair, False


def set_choice(pair: PairChoice, uploaded: dict[str, bytes] | None = None) -> None:
    """Make ``pair`` the pair every page uses (forgetting results that belong to another pair)."""
    st.session_state[PAIR] = pair
    st.session_state[UPLOADED] = dict(uploaded or {})


def uploaded_bytes(key: str) -> bytes | None:
    return st.session_state.get(UPLOADED, {}).get(key)


def alignment_config(pair: PairChoice) -> FusionConfig:
    """The settings that determine the cost matrix and the DP alignment (nothing else varies)."""
    return FusionConfig.from_flat(dataset=pair.dataset, data_root=pair.data_root, cost=st.session_state[COST],
                        probe_size=st.session_state[PROBE_SIZE], activation=st.session_state[ACTIVATION],
                        conv_features=st.session_state[CONV_FEATURES], pin_first=bool(st.session_state[PIN_FIRST]),
                        pin_last=bool(st.session_state[PIN_LAST]))


def fusion_config(pair: PairChoice) -> FusionConfig:
    """The alignment settings plus the Fusion page's, with the what-if matching if there is one; only the
    chosen method's option widgets apply."""
    method = st.session_state[METHOD]
    options = {name: st.session_state[key] for name, key in METHOD_WIDGETS[method].items()}
    return alignment_config(pair).replace(balance=st.session_state[BALANCE], method=method,
                                          inserted_weight=st.session_state[INSERTED_WEIGHT],
                                          fusion_weight=float(st.session_state[FUSION_WEIGHT]),
                                          device=st.session_state[DEVICE], repair=bool(st.session_state[REPAIR]),
                                          bn_reset=bool(st.session_state[BN_RESET]), mapping=override(pair), **options)


def override(pair: PairChoice) -> tuple[tuple[int, ...], ...] | None:
    """The user's per-stage matching for this pair, or None to use the DP's."""
    stored = st.session_state.get(OVERRIDE)
    if stored and stored[0] == pair.id:
        return stored[1]
    return None


def set_override(pair: PairChoice, mapping: list[list[int]] | tuple | None, *, from_widget: bool = False) -> None:
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


def result(pair: PairChoice) -> FusionResult | None:
    """The last fusion result of this pair, or None."""
    stored = st.session_state.get(RESULT)
    if stored and stored[0] == pair.id:
        return stored[1]
    return None


def store_result(pair: PairChoice, fusion: FusionResult) -> None:
    st.session_state[RESULT] = (pair.id, fusion)



# ------------------------------------------------------------------------- shareable URL (query string)
# The settings that determine a result are written to the URL's query string on every run and read
# back when a session starts, so a link reproduces a setup. Only values that differ from the defaults
# are written (short links). Uploaded checkpoints cannot travel in a URL; demo pairs and local paths do.
URL_RESTORED = "url_restored"      # plain key: this session's URL has been read
URL_IGNORED = "url_ignored"        # plain key: query-string entries that could not be used
CMP_POINTS = "cmp_points"          # Compare page: points per barrier curve
CMP_EPOCHS = "cmp_epochs"          # Compare page: the short finetune every method gets
CMP_SET = "cmp_set"                # Compare page: the demo set for many-model fusion
COMPARE_DEFAULTS: dict[str, object] = {CMP_POINTS: 11, CMP_EPOCHS: 2, CMP_SET: next(iter(zoo.DEMO_SETS))}
MATCH = "match"                    # query-string name of the what-if matching: stages "_", units "-"


def url_fields() -> dict[str, tuple[str, object]]:
    """Query-string name → (session key, the allowed values or the type the text parses to)."""
    from clafusion_core.activations import CONV_MODES
    from clafusion_core.balancing import BALANCE_METHODS
    from clafusion_core.data import DATASETS
    from clafusion_core.devices import DEVICES
    from clafusion_core.methods import METHODS
    from clafusion_core import otfusion
    from clafusion_core.config import INSERTED_WEIGHTS
    from clafusion_core.similarity import METRICS

    return {
        "src": (SOURCE_KIND, ("demo", "paths")), "pair": (DEMO_KEY, tuple(zoo.DEMO_PAIRS)),
        "a": (PATH_A, str), "b": (PATH_B, str), "arch_a": (ARCH_A, str), "arch_b": (ARCH_B, str),
        "dataset": (DATASET, tuple(DATASETS)), "root": (DATA_ROOT, str),
        "cost": (COST, tuple(METRICS)), "probe": (PROBE_SIZE, tuple(PROBE_SIZES)), "act": (ACTIVATION, ("post", "pre")),
        "conv": (CONV_FEATURES, tuple(CONV_MODES)), "pin_first": (PIN_FIRST, bool), "pin_last": (PIN_LAST, bool),
        "balance": (BALANCE, tuple(BALANCE_METHODS)), "method": (METHOD, tuple(METHODS)),
        "ground": (GROUND_METRIC, otfusion.GROUND_METRICS), "ground_act": (GROUND_ACTIVATION, otfusion.GROUND_ACTIVATIONS),
        "ground_conv": (GROUND_CONV_FEATURES, otfusion.GROUND_CONV_FEATURES),
        "inserted": (INSERTED_WEIGHT, tuple(INSERTED_WEIGHTS)), "solver": (SOLVER, otfusion.SOLVERS),
        "reg": (SINKHORN_REG, float), "s": (FUSION_WEIGHT, float), "repair": (REPAIR, bool),
        "bn_reset": (BN_RESET, bool), "device": (DEVICE, tuple(DEVICES)),
        "points": (CMP_POINTS, int), "cmp_epochs": (CMP_EPOCHS, int),
    }


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return "auto" if value is None else str(value)


def _decode(text: str, kind: object) -> object:
    """The value ``text`` stands for under ``kind``; ValueError when it stands for none."""
    if isinstance(kind, tuple):
        for value in kind:
            if _encode(value) == text:
                return value
        raise ValueError(text)
    if kind is bool:
        if text not in ("0", "1"):
            raise ValueError(text)
        return text == "1"
    return kind(text)


def _defaults() -> dict[str, object]:
    return {**WIDGET_DEFAULTS, **COMPARE_DEFAULTS}


def url_state() -> dict[str, str]:
    """The query string for the current session: every URL setting that differs from its default,
    the pair always, and the what-if matching when there is one."""
    defaults, params = _defaults(), {}
    for name, (key, _) in url_fields().items():
        value = st.session_state.get(key, defaults[key])
        if value != defaults[key] or name in ("src", "pair"):
            params[name] = _encode(value)
    if st.session_state.get(SOURCE_KIND) != "paths":
        for name in ("a", "b", "arch_a", "arch_b", "dataset", "root"):   # a demo pair brings its own dataset
            params.pop(name, None)
    pair = st.session_state.get(PAIR)
    matching = override(pair) if pair is not None else None
    if matching is not None:
        params[MATCH] = "_".join("-".join(str(a) for a in stage) for stage in matching)
    return params


def restore_url_state(params: dict[str, str]) -> list[str]:
    """Set the session from a query string (before any widget is drawn); returns the entries ignored."""
    fields, ignored = url_fields(), []
    for name, text in params.items():
        if name not in fields:
            if name != MATCH:
                ignored.append(name)
            continue
        key, kind = fields[name]
        try:
            st.session_state[key] = _decode(text, kind)
        except ValueError:
            ignored.append(name)
    if st.session_state[SOURCE_KIND] == "demo" and "pair" in params and "pair" not in ignored:
        set_choice(demo_choice(st.session_state[DEMO_KEY]))
        if MATCH in params:
            try:
                stages = [[int(a) for a in stage.split("-") if a] for stage in params[MATCH].split("_")]
            except ValueError:
                ignored.append(MATCH)
            else:
                set_override(st.session_state[PAIR], stages)
    return ignored


def sync_url() -> None:
    """Read the URL once per session (a shared link), then keep it up to date on every run.

    Streamlit clears the query string when the user moves to another page, so every page writes it.
    """
    for key, default in COMPARE_DEFAULTS.items():
        st.session_state.setdefault(key, default)
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

"""Every piece of UI text more than one place uses: the pages (title, icon, URL path, heading, caption,
explanation), the names shown for the library's options, and the labels of shared widgets.

Presentation only: which option a label stands for is the library's (its tuples of names); what a
page says about its step lives here, so the router, the sidebar, the "Next" links and the pages agree.
"""

from __future__ import annotations

from dataclasses import dataclass

APP_NAME = "CLAFusion Explorer"
APP_ICON = ":material/merge:"


@dataclass(frozen=True)
class PageInfo:
    """One page of the app: its file under ``app_pages/``, navigation entry and heading."""

    file: str
    title: str                 # navigation label and heading ("1 · Alignment")
    icon: str
    url_path: str              # the URL path (the legacy multipage names, so old links keep working)
    caption: str               # one line under the heading
    explain_title: str         # the collapsed explanation for teaching
    explain: str
    heading: str = ""          # the page's title when it differs from the navigation label
    next_label: str = ""       # "Next: ..." link text pointing at this page


PAGES: dict[str, PageInfo] = {
    "home": PageInfo(
        "app_pages/home.py", "Home", ":material/home:", "",
        "Fuse trained neural networks — even of different depth and width — by cross-layer alignment, layer "
        "balancing and optimal transport, and see every step.",
        "How does fusing networks of different depth work?", """
Two networks trained on the same task learn similar features, but in different neurons and, if they have
different depths, in different layers. **CLAFusion** fuses them in three steps:

1. **Alignment** — compare every layer of the deeper network *A* with every layer of the shallower *B* on a
   shared batch of inputs (a *cost matrix*), and find by dynamic programming the order-preserving matching of
   B's layers to A's layers with the smallest total cost.
2. **Fusion** — make B as deep as A by inserting *identity layers* where A has an unmatched layer (they
   change nothing), then fuse the two equally deep networks layer by layer with *optimal transport*, which
   pairs up similar neurons before averaging the weights.
3. **Finetune** — a few epochs of training recover most of what the one-shot fusion loses.

With more than two networks, every network is aligned and balanced onto one *target* and then all are
averaged with their weights.
""", heading=APP_NAME),
    "alignment": PageInfo(
        "app_pages/1_Alignment.py", "1 · Alignment", ":material/grid_on:", "Alignment",
        "Which layer of the deeper network A does each layer of the shallower network B correspond to?",
        "The cost matrix and the dynamic programme", r"""
**The cost matrix.** Both networks see the same *probe batch* of held-out images. For every layer *i* of A and
every layer *j* of B we compare the two layers' activations on that batch: `C[i, j]` is their dissimilarity,
0 when the two layers represent the inputs in the same way (up to a rotation or scaling of the neurons),
1 when they have nothing in common. Dark cells are similar layers. The metrics differ in what counts as
"the same": CKA compares which inputs each layer finds similar to each other, CCA looks for shared linear
directions, Wasserstein matches the neurons themselves, and *width* only looks at the layer sizes
(CLAFusion's default, which needs no data at all).

**The dynamic programme (DP).** We look for the matching `a(j)` — one layer of A for every layer of B — that
keeps the layers in order (`a(0) < a(1) < …`, so information still flows forwards) and has the smallest total
cost `Σ C[a(j), j]`. Trying all matchings grows combinatorially; the DP solves it exactly in `m × n` steps with
`F[i][j] = min(F[i−1][j], F[i−1][j−1] + C[i][j])` — either A's layer *i* is left out, or it is matched to
B's layer *j*. By default the first layers and the last hidden layers are *pinned* to each other. For CNNs
and ResNets the matching is done within each stage (between two poolings / at one resolution).

A's layers that no layer of B is matched to are where the Fusion step inserts identity layers into B.
With more than two networks, each is aligned with the target: choose which one the heatmap shows.
""", next_label="Next: 1 · Alignment — match the layers"),
    "fusion": PageInfo(
        "app_pages/2_Fusion.py", "2 · Fusion", ":material/merge:", "Fusion",
        "Make the networks equally deep, then fuse them layer by layer with optimal transport.",
        "Identity layers and transport plans", r"""
**Balancing.** Layer-wise fusion needs two networks of equal depth. With **add**, B gets an *identity layer*
wherever the alignment left a layer of A unmatched: weights = the identity matrix (a conv kernel with a single 1
in the centre), bias 0. Such a layer computes `relu(I·x + 0) = relu(x)`, and because its input comes out of a
ReLU it is never negative, so `relu(x) = x`: the balanced B computes *exactly* what B computed (its accuracy is
the same — see "balanced B" in the chart). For residual networks the identity is a block whose last BatchNorm
is zero, so the block adds nothing to its input. With **merge** (MLPs only), A loses its unmatched layers
instead, each folded into the next one through its average ReLU pattern — an approximation, so A changes.

**Transport plans.** Neuron 5 of A's layer may do what neuron 17 of B's does: averaging weights position by
position mixes unrelated neurons (that is why "vanilla averaging" fails). For every layer, optimal transport
finds the plan `T` that moves A's neurons onto B's at the smallest total distance (distance between their
weights, or between their activations on the probe batch). For equal widths `T` is a permutation; otherwise a
neuron may be split over several partners. A's weights are re-ordered by `T` (and its inputs by the layer
below's plan) and then averaged with B's: `W = (1 − s)·W_A + s·W_B`. With more than two networks each one is
transported onto the *target* and the results are averaged with the networks' weights.

**Neuron interpolation** (the other method) does not average weights at all. Layer by layer, on a labelled
fusion batch, it fits every parent neuron's pre-activation by least squares from the inputs the *fused* network
feeds that layer (so errors of the layers below are compensated), clusters all parents' neurons into the fused
width with K-means on those fits (each neuron weighted by its importance), and makes each fused neuron the fit of
its cluster's weighted mean pre-activation. The chart below then shows which cluster each of A's neurons joined.

**Repair.** Averaging imperfectly matched neurons shrinks their signal; statistics repair rescales each fused
neuron to the mean and spread its parents had on the probe batch. BatchNorm layers get their statistics
recomputed on training data instead.
""", next_label="Next: 2 · Fusion — balance and fuse"),
    "finetune": PageInfo(
        "app_pages/3_Finetune.py", "3 · Finetune", ":material/trending_up:", "Finetune",
        "A few epochs of training recover most of what the one-shot fusion lost.",
        "Why finetune, and what is a fair comparison?", """
The one-shot fused model starts from a good point — its neurons are aligned and averaged — but averaging is
never perfect, so it usually scores below its parents. A few epochs of ordinary training (*finetuning*) on
the training split repair most of that. We keep the epoch with the best **validation** accuracy (never the
test split, which only reports the final numbers).

**Distillation from the parents.** By default the fused model learns not only from the labels but also
from its parents: the loss mixes cross-entropy with the KL divergence to the parents' averaged outputs,
softened by a temperature *T* (Hinton et al., 2015). The soft outputs carry what the parents know about
the *wrong* classes too — which digit a sloppy 7 resembles — and a few epochs on labels alone cannot teach
that. On the MLP demo pair it lifts the fused model from about 1.5 points below its better parent
(labels only) to level with it. Set the weight to 0 for plain training.

A fair comparison gives the parents the same extra epochs: tick *also finetune the parents* to train each
parent further with the same settings (distillation from the same teacher included). Beating *those* numbers is the real test of fusion; matching one
parent with a single model that carries both parents' knowledge is already useful (e.g. as a compressed
replacement for the ensemble).

The fused model can be downloaded as `.safetensors` (it loads back into this app and the CLI), and the
whole run — cost matrix, alignment, accuracies, timings and settings — as `result.json`.
""", next_label="Next: 3 · Finetune — recover the accuracy"),
    "compare": PageInfo(
        "app_pages/4_Compare.py", "4 · Compare", ":material/compare_arrows:", "Compare",
        "Every fusion method on the pair in use, with the same probe batch and settings: loss barriers, "
        "accuracy before and after the same short finetune, and time.",
        "Loss barriers, and why the best-looking alignment may not fuse best", r"""
**Loss barrier.** Walk in a straight line from network A's weights to B's, `θ_t = (1 − t)·θ_A + t·θ_B`, and
measure the test loss along the way. If the loss rises in the middle, the two networks sit in different valleys
of the loss landscape; the **barrier height** is the largest rise above the straight line joining the two ends,
`max_t [L(θ_t) − ((1 − t)·L(θ_A) + t·L(θ_B))]`. Without alignment (*naive*) the path mixes unrelated neurons and
the barrier is high. Re-ordering A's neurons to match B's first (*OT-aligned*) often flattens it, and *repair*
(resetting each neuron's mean and spread at every point) can flatten it further. One alignment serves the whole
curve: the neuron matching does not depend on t.

**Methods.** Each method fuses the same two networks with the same probe batch, alignment and balancing; every
fused model then gets the same short finetune. The ensemble (averaging both networks' outputs) is the ceiling a
single model rarely reaches; vanilla averaging is the floor.

**Cost metrics downstream.** The Alignment page shows which layers each cost metric matches. Here each metric's
matching is fused: the metric whose matching looks cleanest is not always the one that fuses best.
"""),
}

# ---------------------------------------------------------------------------------- option names
SOURCES = {"demo": "Demo pair", "set": "Demo set", "upload": "Upload checkpoints", "paths": "Local paths"}
DATASET_LABELS = {"digits": "digits — built in, 8×8 (no files needed)", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
                  "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
CHECKPOINT_TYPES = ["safetensors", "pt", "pth"]
ACTIVATION_LABELS = {"post": "after ReLU", "pre": "before ReLU"}
CONV_FEATURE_LABELS = {"pool": "average", "flatten": "flatten"}
BALANCE_LABELS = {"add": "add identity layers to B", "merge": "merge A's extra layers away"}
GROUND_LABELS = {"activations": "activations", "weights": "weights"}
SOLVER_LABELS = {"emd": "exact (EMD)", "sinkhorn": "Sinkhorn (entropic)"}
DEVICE_LABELS = {"auto": "auto", "cpu": "CPU", "cuda": "CUDA"}
INSERTED_LABELS = {"deeper": "keep A's layer", "average": "average with the identity"}
IDENTITY_WIDTH_LABELS = {"deeper": "as wide as A's layer", "input": "as wide as its input"}
GROUND_CHOICE_LABELS = {"conv": "for CNNs / ResNets", "validation": "always", "fixed": "never"}
CONV_GROUND_LABELS = {"positions": "every position", "pool": "channel means"}
GROUPING_LABELS = {"kmeans": "K-means", "hungarian": "Hungarian (1:1)"}
OPTIMIZER_LABELS = {"sgd": "SGD (momentum 0.9)", "adam": "Adam"}
#: what a method's per-parent correspondence is called on the Fusion page, and how to read its heatmap
CORRESPONDENCE = {
    "ot": ("Transport plans", "Row i, column k: how much of A's neuron i is moved onto B's neuron k. One dark cell per "
                              "row is a permutation (a clean one-to-one match); spread-out rows mean A's neuron is shared."),
    "interp": ("Cluster membership", "Row i, column k: A's neuron i went into fused neuron k (each fused neuron is the "
                                     "fit of its cluster's weighted mean pre-activation; B's neurons are clustered too)."),
}
RUN_NAMES = {"fused": "fused", "model_a": "model A", "model_b": "model B"}

ACCURACY_LABELS = {
    "model_a": "model A",
    "model_b": "model B",
    "balanced_a": "A after merging",
    "balanced_b": "balanced B",
    "ensemble": "ensemble",
    "vanilla": "vanilla average",
    "fused_plain": "fused, unrepaired",
    "fused": "fused (one-shot)",
    "fused_finetuned": "fused + finetuned",
    "model_a_finetuned": "A + finetuned",
    "model_b_finetuned": "B + finetuned",
}

#: Short metric names for the six small multiples of the metric comparison (full names: METRIC_LABELS).
SHORT_METRIC_LABELS = {"linear_cka": "linear CKA", "debiased_cka": "debiased CKA", "rbf_cka": "RBF CKA",
                       "cca": "CCA", "wasserstein": "Wasserstein", "width": "width"}

# ------------------------------------------------------------------------ shared widget labels, captions
ARCH_SPEC = "Arch spec (only if it cannot be read from the file)"
ARCH_PLACEHOLDER = "e.g. mlp:400-200-100 or resnet18"

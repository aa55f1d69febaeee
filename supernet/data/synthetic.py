"""Synthetic k-modal data with planted cross-modal structure, so the right answer is known.

Every planted path ``i->j`` is a *pointer lookup* that one attention hop along ``i->j`` solves:

* each step ``p`` of the **source** i carries a key code ``K[c_p]`` (a random permutation of a
  code book, so every step has its own code) and a value ``v_p`` in {-1, +1}, half of the steps each (so the source alone says
  nothing about the signal);
* each step ``t`` of the **target** j carries a pointer code ``K[c_{a_t}]`` naming a random
  source step ``a_t``;
* the path's signal is ``s = mean_t v_{a_t}``: every target step must find the source step whose
  key matches its pointer and read its value.

Along ``i->j`` the target's steps are the queries and the source's steps the keys, so one
attention hop retrieves ``v_{a_t}`` at every target step and mean pooling sums them. The reverse
path ``j->i`` sees the same two modalities but can only *partly* recover ``s``: a source step can
find out that some target step points at it, not how many do. Paths between other pairs see no
signal at all: values and pointers are independent noise on their own.

The label combines the planted paths' signals ``S = Σ s``: class ``1[S > 0]`` (ties broken by a
coin) for classification, ``3·tanh(2·S)`` for regression. Every feature also gets Gaussian noise
of standard deviation ``noise``, and dimensions no role uses are pure noise.

Three options make harder families (all off by default; the data of a study without them is
the same, bit for bit, as before they existed):

* ``path_strengths``: the label combines ``S = Σ w_p s_p`` (graded paths: a weak path moves the
  label less and is harder to tell from noise).
* ``interaction_paths`` (two paths, a *multiplicative pair*): both are planted like the others,
  but their signals enter the label only as ``interaction_strength · √L · s_a · s_b`` (scaled so
  that strength 1 moves the label as much as one planted path of strength 1). Neither path alone
  says anything about it: a subnet must keep both, and the head must multiply two path outputs,
  which ``[model] head = "mlp"`` can and a linear head on the averaged path outputs cannot.
* ``shortcut_modality``: one extra feature of that modality (every step, plus ``noise``) holds
  the label (``±1``; ``label / 3`` for regression) for a share ``shortcut_strength`` of the
  **train** samples and another train sample's label for the rest; in valid and test it always
  holds another sample's label (same distribution, no information). A model that reads it fits the
  training split better and generalizes worse. Every path touching that modality can read it (as
  target through the residual stream, as source through attention's values): these are the
  *shortcut paths* (``MultimodalData.shortcut_paths``; :func:`shortcut_paths`).

``MultimodalData.informative_paths`` returns the planted paths and the interaction pair
(:func:`informative_paths`); the *planted mask* keeps exactly them. ``studies/family.toml`` is a
k = 6 family with all three.
"""

from __future__ import annotations

import torch

from supernet.config import DataConfig
from supernet.data.dataset import SPLITS, ModalitySpec, MultimodalData, Split
from supernet.errors import ConfigError
from supernet.memory import require_memory, split_bytes
from supernet.paths import ARROW

CODE_DIM = 8  # size of a key / pointer code; codes are orthogonal, so length <= CODE_DIM


def _pairs(config: DataConfig, paths: list[str], key: str) -> list[tuple[int, int]]:
    names = config.modalities
    pairs = []
    for path in paths:
        source, _, target = path.partition(ARROW)
        if source not in names or target not in names or source == target:
            raise ConfigError(
                f"[data] {key} path {path!r} must be 'source->target' with two different "
                f"modalities of {names}"
            )
        pairs.append((names.index(source), names.index(target)))
    return pairs


def _planted(config: DataConfig) -> list[tuple[int, int]]:
    """The pointer-lookup paths: the planted ones, then the interaction pair."""
    return _pairs(config, config.planted_paths, "planted") + _pairs(config, config.interaction_paths, "interaction")


def informative_paths(config: DataConfig) -> list[str]:
    """The paths whose signal enters the label: the planted paths, then the interaction pair."""
    return list(config.planted_paths) + [p for p in config.interaction_paths if p not in config.planted_paths]


def shortcut_paths(config: DataConfig) -> list[str]:
    """Every path touching ``shortcut_modality`` (in path order), or [] without a shortcut."""
    m = config.shortcut_modality
    if not m:
        return []
    names = config.modalities
    return [f"{a}{ARROW}{b}" for a in names for b in names if a != b and m in (a, b)]


def synthetic_problems(config: DataConfig) -> list[str]:
    """One line per problem of the options of harder families (strengths, interaction pair,
    shortcut), each naming the fix; ``mro-search validate`` reports them all."""
    problems = []
    if config.path_strengths and len(config.path_strengths) != len(config.planted_paths):
        problems.append(
            f"[data] path_strengths has {len(config.path_strengths)} entries for {len(config.planted_paths)} "
            "planted_paths: give one per planted path, or leave it out (all 1)"
        )
    if config.interaction_paths and len(config.interaction_paths) != 2:
        problems.append(f"[data] interaction_paths must name exactly two paths (a multiplicative pair), got {len(config.interaction_paths)}")
    elif len(set(config.interaction_paths)) < len(config.interaction_paths):
        problems.append("[data] interaction_paths names one path twice: give two different paths")
    both = set(config.interaction_paths) & set(config.planted_paths)
    if both:
        problems.append(f"[data] {sorted(both)} are in both planted_paths and interaction_paths: put each path in one")
    m = config.shortcut_modality
    if m and m not in config.modalities:
        problems.append(f"[data] shortcut_modality {m!r} is not one of the modalities {config.modalities}")
    elif m:
        touching = [p for p in informative_paths(config) if m in p.split(ARROW)]
        if touching:
            problems.append(
                f"[data] shortcut_modality {m!r} is touched by informative paths {touching}: choose a modality no "
                "planted or interaction path uses"
            )
    return problems


def required_dims(config: DataConfig) -> list[int]:
    """Features each modality needs for its planted roles (source: code + value; target: code;
    the shortcut modality: one more)."""
    need = [0] * len(config.modalities)
    for i, j in _planted(config):
        need[i] += CODE_DIM + 1
        need[j] += CODE_DIM
    if config.shortcut_modality in config.modalities:
        need[config.modalities.index(config.shortcut_modality)] += 1
    return need


def make_synthetic(config: DataConfig) -> MultimodalData:
    names, dims, L = config.modalities, config.dims, config.length
    if len(names) < 2:
        raise ConfigError(f"[data] synthetic data needs at least 2 modalities, got {names}")
    if len(dims) != len(names):
        raise ConfigError(f"[data] dims has {len(dims)} entries but there are {len(names)} modalities")
    if len(config.samples) != 3 or min(config.samples) < 1:
        raise ConfigError("[data] samples must be three positive counts: [train, valid, test]")
    planted = _planted(config)
    problems = synthetic_problems(config)
    if problems:
        raise ConfigError(problems[0])
    for m, (have, need) in enumerate(zip(dims, required_dims(config))):
        if have < need:
            raise ConfigError(
                f"[data] dims[{m}] = {have} is too small for modality {names[m]!r}: its planted "
                f"roles need at least {need} features"
            )
    modalities = [ModalitySpec(name, d, L) for name, d in zip(names, dims)]
    require_memory(  # the features, and the noise drawn for the largest modality at a time
        split_bytes(modalities, sum(config.samples)) + split_bytes(modalities[:1], max(config.samples)) * max(dims) // dims[0],
        what=f"synthetic data ({sum(config.samples)} samples of {sum(dims)} features x {L} steps)",
        fix="lower [data] samples, dims or length",
    )
    g = torch.Generator().manual_seed(config.seed)
    # orthogonal codes of norm 2: a pointer matches exactly one key
    codebooks = [
        torch.linalg.qr(torch.randn(CODE_DIM, CODE_DIM, generator=g))[0][:L] * 2.0 for _ in planted
    ]
    splits = {
        name: _make_split(n, config, planted, codebooks, g, train=name == "train")
        for name, n in zip(SPLITS, config.samples)
    }
    described = ", ".join(config.planted_paths) or "nothing"
    if config.interaction_paths:
        described += f"; interaction {' x '.join(config.interaction_paths)}"
    if config.shortcut_modality:
        described += f"; shortcut {config.shortcut_modality!r} (train only, strength {config.shortcut_strength:g})"
    return MultimodalData(
        modalities=modalities,
        task=config.task,
        splits=splits,
        num_classes=2 if config.task == "classification" else None,
        informative_paths=informative_paths(config),
        shortcut_paths=shortcut_paths(config),
        description=f"synthetic, k={len(names)}, planted {described}",
    )


def _make_split(n, config: DataConfig, planted, codebooks, g: torch.Generator, *, train: bool = False) -> Split:
    L, dims = config.length, config.dims
    features = [torch.zeros(n, L, d) for d in dims]
    offset = [0] * len(dims)
    signal = torch.zeros(n)
    weights = list(config.path_strengths) or [1.0] * len(config.planted_paths)
    pair = []  # the interaction pair's signals
    for p, ((i, j), codes) in enumerate(zip(planted, codebooks)):
        perm = torch.argsort(torch.rand(n, L, generator=g), dim=1)  # (n, L) source step -> code
        # balanced values (half +1, half -1) so no modality alone says anything about s
        balanced = (torch.arange(L) < L // 2).float() * 2 - 1  # (L,)
        values = balanced[torch.argsort(torch.rand(n, L, generator=g), dim=1)]  # (n, L)
        pointers = torch.randint(0, L, (n, L), generator=g)  # (n, L) target step -> source step
        o = offset[i]
        features[i][:, :, o : o + CODE_DIM] = codes[perm]
        features[i][:, :, o + CODE_DIM] = values
        offset[i] += CODE_DIM + 1
        o = offset[j]
        features[j][:, :, o : o + CODE_DIM] = codes[torch.gather(perm, 1, pointers)]
        offset[j] += CODE_DIM
        s = torch.gather(values, 1, pointers).mean(dim=1)  # (n,)
        if p < len(weights):
            signal += s if weights[p] == 1.0 else weights[p] * s
        else:
            pair.append(s)
    if pair:  # std(s) ~ 1/sqrt(L), std(s_a s_b) ~ 1/L: sqrt(L) puts the product on s's scale
        signal += config.interaction_strength * L**0.5 * pair[0] * pair[1]
    for m, d in enumerate(dims):
        free = d - offset[m]
        if free:
            features[m][:, :, offset[m] :] = torch.randn(n, L, free, generator=g)
        features[m] += config.noise * torch.randn(n, L, d, generator=g)
    if config.task == "classification":
        coin = torch.rand(n, generator=g) < 0.5
        labels = torch.where(signal == 0, coin, signal > 0).long()
    else:
        labels = 3 * torch.tanh(2 * signal)
    if config.shortcut_modality:
        _add_shortcut(features, offset, labels, config, g, train=train)
    return Split(features={name: f for name, f in zip(config.modalities, features)}, labels=labels)


def _add_shortcut(features, offset, labels: torch.Tensor, config: DataConfig, g: torch.Generator, *, train: bool) -> None:
    """Write the shortcut feature (first free feature of ``shortcut_modality``): the sample's own
    label for a share ``shortcut_strength`` of the train split, another sample's label elsewhere."""
    m = config.modalities.index(config.shortcut_modality)
    n, L = len(labels), config.length
    code = labels.float() * 2 - 1 if config.task == "classification" else labels / 3  # (n,) in [-1, 1]
    other = code[torch.randperm(n, generator=g)]
    own = torch.rand(n, generator=g) < config.shortcut_strength
    shown = torch.where(own, code, other) if train else other
    features[m][:, :, offset[m]] = shown[:, None] + config.noise * torch.randn(n, L, generator=g)

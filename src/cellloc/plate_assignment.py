"""Turning per-site logits into per-well answers, and the RxRx1 plate design used at prediction.

Site averaging: a well is imaged at two sites; its answer is the mean of both sites' logits.

Plate-aware assignment: by design, every plate of an RxRx1 experiment holds one of four fixed
groups of siRNAs (277 each in the real data), each siRNA in exactly one well. A classifier that
predicts each well on its own can give one siRNA to three wells of a plate and none to another.
Here, per plate: (1) choose the group whose best one-to-one assignment of its siRNAs to the
plate's wells has the highest total log-probability; (2) take that assignment
(:func:`scipy.optimize.linear_sum_assignment` on the negative log-probabilities). The groups are
not given by the competition; :func:`plate_groups` recovers them from the training table (the
siRNAs that share a plate belong to one group).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment


def average_by_sample(logits: np.ndarray, sample_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Mean of the rows of ``logits`` that belong to the same sample (a well's sites).

    ``logits``: (N, C) float, one row per field; ``sample_ids``: N sample ids (e.g. from
    ``rxrx1.sample_of``). Returns the samples in order of first appearance and an (M, C) float
    array of their mean logits. Averaging logits (not argmax votes) lets a confident site
    outweigh an unsure one.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or len(sample_ids) != len(logits):
        raise ValueError(f"need (N, C) logits and N sample ids, got {logits.shape} and {len(sample_ids)}")
    order: dict[str, int] = {}
    index = np.array([order.setdefault(s, len(order)) for s in sample_ids], np.int64)
    sums = np.zeros((len(order), logits.shape[1]), np.float64)
    np.add.at(sums, index, logits)
    counts = np.bincount(index, minlength=len(order)).astype(np.float64)
    return list(order), (sums / counts[:, None]).astype(logits.dtype if logits.dtype.kind == "f" else np.float64)


def sample_probabilities(probs: np.ndarray, sample_ids: Sequence[str], kind: str) -> tuple[list[str], np.ndarray]:
    """One row of probabilities per sample from its fields' rows (a well's two sites).

    ``probs``: (N, C) float per field. Multiclass: the softmax of the fields' mean
    log-probability, which is the softmax of their mean logits (a field's log-probabilities are
    its logits minus one constant per row), i.e. :func:`average_by_sample` on logits.
    Multilabel: the mean probability per class. Returns (samples in first-seen order, (M, C)
    float32).
    """
    probs = np.asarray(probs, np.float64)
    if kind == "multiclass":
        ids, mean_log = average_by_sample(np.log(np.clip(probs, 1e-38, None)), sample_ids)
        return ids, np.exp(log_softmax(mean_log)).astype(np.float32)
    ids, mean = average_by_sample(probs, sample_ids)
    return ids, mean.astype(np.float32)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (N, C) logits (float64), stable for large values."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def plate_groups(sirnas_per_plate: Iterable[Iterable[int]]) -> list[frozenset[int]]:
    """The siRNA groups of the plate design, from which siRNAs were seen together on a plate.

    Each item is the set of treatment siRNAs on one (experiment, plate) of the training data.
    Sets that share an siRNA belong to one group (union-find), so plates that hold only part of
    a group still add up to it. Returns the groups sorted by their smallest id.
    """
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for plate in sirnas_per_plate:
        ids = [int(s) for s in plate]
        for s in ids:
            parent.setdefault(s, s)
        for s in ids[1:]:
            ra, rb = find(ids[0]), find(s)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, set[int]] = {}
    for s in parent:
        groups.setdefault(find(s), set()).add(s)
    return sorted((frozenset(g) for g in groups.values()), key=min)


def assign_once(log_probs: np.ndarray, candidates: Sequence[int]) -> tuple[np.ndarray, float]:
    """Give each well (row) a different class of ``candidates``, maximising the summed log-probability.

    ``log_probs``: (W, C) float (log-softmax of the wells' logits over all classes);
    ``candidates``: K class ids. With W <= K every well gets its own class; with W > K (more
    wells than the group has siRNAs, which a correct design never has) each class is allowed
    ceil(W / K) times. Returns ((W,) int64 class ids, total log-probability).
    """
    cand = np.asarray(list(candidates), np.int64)
    if len(cand) == 0:
        raise ValueError("no candidate classes")
    w = len(log_probs)
    reps = max(1, -(-w // len(cand)))
    cols = np.tile(cand, reps)
    cost = -np.asarray(log_probs, np.float64)[:, cols]
    rows, picked = linear_sum_assignment(cost)
    out = np.empty(w, np.int64)
    out[rows] = cols[picked]
    return out, float(-cost[rows, picked].sum())


def assign_plate(logits: np.ndarray, groups: Sequence[Iterable[int]]) -> tuple[np.ndarray, int]:
    """Choose a plate's siRNA group and assign its siRNAs to the plate's wells, each once.

    ``logits``: (W, C) float, one row per well of the plate (site-averaged). ``groups``: the
    candidate groups (class ids). The group is the one whose best assignment scores highest.
    Returns ((W,) int64 class ids, index of the chosen group).
    """
    lp = log_softmax(logits)
    best: tuple[float, int, np.ndarray] | None = None
    for g, members in enumerate(groups):
        pred, score = assign_once(lp, sorted(members))
        if best is None or score > best[0]:
            best = (score, g, pred)
    if best is None:
        raise ValueError("no groups to choose from")
    return best[2], best[1]


def assign_by_plate(logits: np.ndarray, plate_keys: Sequence[Hashable], groups: Sequence[Iterable[int]]) -> np.ndarray:
    """Plate-aware predictions for many wells: :func:`assign_plate` on each plate's rows.

    ``logits``: (N, C) per well; ``plate_keys``: N keys naming each well's plate, e.g.
    ``(experiment, plate)``. Only treatment wells belong here (the controls are known). Returns
    (N,) int64 class ids.
    """
    logits = np.asarray(logits)
    if len(plate_keys) != len(logits):
        raise ValueError(f"{len(plate_keys)} plate keys for {len(logits)} wells")
    out = np.empty(len(logits), np.int64)
    rows_of: dict[Hashable, list[int]] = {}
    for i, k in enumerate(plate_keys):
        rows_of.setdefault(k, []).append(i)
    for rows in rows_of.values():
        out[rows] = assign_plate(logits[rows], groups)[0]
    return out


def plate_confidence(logits: np.ndarray, plate_keys: Sequence[Hashable], groups: Sequence[Iterable[int]],
                     labels: Sequence[int]) -> np.ndarray:
    """How likely each well's answer is right under the plate design: P(group of its plate) * P(label | group).

    ``logits``: (N, C) per well (log-probabilities will do); ``plate_keys``: N keys naming each
    well's plate; ``groups``: the siRNA groups (:func:`plate_groups`); ``labels``: (N,) the answers
    (e.g. :func:`assign_by_plate`'s). Per plate, the probability that it holds group g is the
    softmax over the groups of their best one-to-one assignment log-likelihood (what
    :func:`assign_plate` compares); a well's probability of its label given the group is its
    probability renormalised over that group's siRNAs. The product is what pseudo-labelling
    should rank by: a well's raw probability of its siRNA is small whenever the control classes
    or the other groups take mass, and says nothing about whether its plate's group was found.
    A label in no group gets 0. Returns (N,) float64 in [0, 1].
    """
    lp = log_softmax(np.asarray(logits, np.float64))
    labels = np.asarray(labels, np.int64)
    if len(plate_keys) != len(lp) or labels.shape != (len(lp),):
        raise ValueError(f"{len(plate_keys)} plate keys and {labels.shape} labels for {len(lp)} wells")
    members = [np.array(sorted(g), np.int64) for g in groups]
    group_of = {int(s): g for g, m in enumerate(members) for s in m}
    out = np.zeros(len(lp), np.float64)
    rows_of: dict[Hashable, list[int]] = {}
    for i, k in enumerate(plate_keys):
        rows_of.setdefault(k, []).append(i)
    for rows in rows_of.values():
        plate = lp[rows]
        scores = np.array([assign_once(plate, m)[1] for m in members])
        p_group = np.exp(scores - scores.max())
        p_group /= p_group.sum()
        for j, i in enumerate(rows):
            g = group_of.get(int(labels[i]))
            if g is None:
                continue
            within = plate[j, members[g]]
            within = np.exp(within - within.max())
            out[i] = p_group[g] * within[members[g] == labels[i]][0] / within.sum()
    return out

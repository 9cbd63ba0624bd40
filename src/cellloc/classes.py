"""Label sets: class names per dataset, looked up by name (a task names its label set)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelSet:
    """A task's classes. ``negative`` is the id meaning "no specific localisation", if any."""

    name: str
    names: tuple[str, ...]
    negative: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)


HPA_SINGLE_CELL = LabelSet(
    "hpa19",
    (
        "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center",
        "Nuclear speckles", "Nuclear bodies", "Endoplasmic reticulum", "Golgi apparatus",
        "Intermediate filaments", "Actin filaments", "Microtubules", "Mitotic spindle",
        "Centrosome", "Plasma membrane", "Mitochondria", "Aggresome", "Cytosol",
        "Vesicles and punctate cytosolic patterns", "Negative",
    ),
    negative=18,
)

HPA_2018 = LabelSet(
    "hpa28",
    (
        "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center",
        "Nuclear speckles", "Nuclear bodies", "Endoplasmic reticulum", "Golgi apparatus",
        "Peroxisomes", "Endosomes", "Lysosomes", "Intermediate filaments", "Actin filaments",
        "Focal adhesion sites", "Microtubules", "Microtubule ends", "Cytokinetic bridge",
        "Mitotic spindle", "Microtubule organizing center", "Centrosome", "Lipid droplets",
        "Plasma membrane", "Cell junctions", "Mitochondria", "Aggresome", "Cytosol",
        "Cytoplasmic bodies", "Rods & rings",
    ),
)

# RxRx1: 1,108 treatment siRNAs (0..1107), 30 positive controls (1108..1137) and the negative
# control (1138); the controls are labelled even in the test split.
RXRX1_TREATMENTS = 1108
RXRX1 = LabelSet(
    "rxrx1",
    tuple(f"sirna_{i}" for i in range(RXRX1_TREATMENTS))
    + tuple(f"positive_control_{i}" for i in range(RXRX1_TREATMENTS, RXRX1_TREATMENTS + 30))
    + ("negative_control",),
)

LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (HPA_SINGLE_CELL, HPA_2018, RXRX1)}

# Channel files per dataset, in the order they are stacked into the HxWxC array.
CHANNEL_SETS: dict[str, tuple[str, ...]] = {
    "hpa": ("red", "green", "blue", "yellow"),
    "rxrx1": ("w1", "w2", "w3", "w4", "w5", "w6"),
}


def get_label_set(name: str) -> LabelSet:
    """Look a label set up by name (``hpa19``, ``hpa28``, ``rxrx1``)."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise KeyError(f"unknown label set {name!r}; known: {', '.join(LABEL_SETS)}") from None

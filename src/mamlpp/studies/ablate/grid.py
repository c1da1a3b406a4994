"""The ablation grid as data: each variant names the MAML++ techniques it switches on over
plain MAML (the paper, section 4; docs/algorithm.md), and the [meta] values that follow from
that."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mamlpp.core.config import MetaConfig
from mamlpp.errors import ConfigError
from mamlpp.run.presets import MAML_META
from mamlpp.util.format import did_you_mean

# The [meta] key that switches each technique; "on" values come from the MAML++ preset, "off"
# values from presets.MAML_META (MetaConfig.maml()).
TECHNIQUE_KEYS = {
    "MSL": "msl",
    "DA": "first_order_epochs",
    "BNRS": "per_step_bn_stats",
    "BNWB": "per_step_bn_affine",
    "LSLR": "learn_inner_lrs",
    "CA": "cosine_lr",
}
TECHNIQUES = tuple(TECHNIQUE_KEYS)


@dataclass(frozen=True, eq=False)
class Variant:
    """One row of the ablation: the techniques switched on over MAML, plus fixed meta values."""

    name: str
    techniques: tuple[str, ...]
    label: str  # the table's "techniques" column
    fixed: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def folder(self) -> str:
        """The run folder's name: the variant's name made file- and report-safe ("maml++" ->
        "mamlpp", "/" -> "_"; `mamlpp report` turns "+" runs into "-", so "maml++/seed0" and
        "maml/seed0" would share plot file names)."""
        return self.name.replace("++", "pp").replace("/", "_")


GRID: tuple[Variant, ...] = (
    Variant("maml", (), "none (MAML)"),
    Variant("maml+msl", ("MSL",), "MSL"),
    Variant("maml+da", ("DA",), "DA"),
    # Under transductive BN (the reference's behaviour) running statistics never reach an
    # output, so BNRS alone would be MAML again; alone it is measured as the paper describes it:
    # per-step statistics collected in training and used at evaluation.
    Variant(
        "maml+bnrs",
        ("BNRS",),
        "BNRS (per-step BN at evaluation)",
        {"bn_mode": "per_step"},
        note="bn_mode=per_step: with transductive BN the statistics never affect an output",
    ),
    Variant("maml+bnwb", ("BNWB",), "BNWB"),
    Variant("maml+lslr", ("LSLR",), "LSLR"),
    Variant("maml+ca", ("CA",), "CA"),
    Variant("maml++", TECHNIQUES, "all six, transductive BN", {"bn_mode": "transductive"}),
    Variant(
        "maml++/per_step-bn",
        TECHNIQUES,
        "all six, per-step BN at evaluation",
        {"bn_mode": "per_step"},
    ),
    # Batch-independent predictions: the query normalised with the support set's statistics.
    Variant(
        "maml++-support-bn",
        TECHNIQUES,
        "all six, BN from the support set",
        {"bn_mode": "support"},
    ),
    Variant("fomaml", (), "none, first order", {"second_order": False}),
)

VARIANTS: dict[str, Variant] = {v.name: v for v in GRID}


def variant_meta(variant: Variant, on: MetaConfig) -> dict[str, Any]:
    """The [meta] values of ``variant``: MAML's off values, the variant's techniques switched
    on with the values of ``on`` (the MAML++ preset's), transductive BN and second order
    unless fixed."""
    meta: dict[str, Any] = dict(MAML_META)
    for tag in variant.techniques:
        meta[TECHNIQUE_KEYS[tag]] = getattr(on, TECHNIQUE_KEYS[tag])
    return {**meta, "bn_mode": "transductive", "second_order": True, **variant.fixed}


def parse_variants(text: str) -> list[Variant]:
    """The variants named in ``text`` (comma-separated, or "all"), in grid order."""
    if text.strip() == "all":
        return list(GRID)
    known = VARIANTS | {v.folder: v for v in GRID}  # run folder names work too ("mamlpp")
    names = [part.strip() for part in text.split(",")]
    for name in names:
        if name not in known:
            hint = did_you_mean(name, VARIANTS)
            raise ConfigError(f"unknown variant {name!r}{hint}; --list shows the grid")
    chosen = {known[name] for name in names}
    return [v for v in GRID if v in chosen]

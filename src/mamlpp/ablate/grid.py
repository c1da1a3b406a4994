"""The ablation grid as data: each variant names the MAML++ techniques it switches on over
plain MAML (spec section 1), and the [meta] values that follow from that."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

TECHNIQUES = ("MSL", "DA", "BNRS", "BNWB", "LSLR", "CA")
# The [meta] keys that switch each technique; "on" values come from the MAML++ preset, "off"
# values from presets.MAML_META (MetaConfig.maml()).

TECHNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "MSL": ("msl",),
    "DA": ("first_order_epochs",),
    "BNRS": ("per_step_bn_stats",),
    "BNWB": ("per_step_bn_affine",),
    "LSLR": ("learn_inner_lrs",),
    "CA": ("cosine_lr",),
}


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
    Variant("fomaml", (), "none, first order", {"second_order": False}),
)

VARIANTS: dict[str, Variant] = {v.name: v for v in GRID}


def variant_meta(variant: Variant, on_values: dict[str, Any]) -> dict[str, Any]:
    """The [meta] values of ``variant``: MAML's off values, the variant's techniques switched
    on with the MAML++ preset's values, transductive BN and second order unless fixed."""
    from ..presets import MAML_META

    meta: dict[str, Any] = dict(MAML_META)
    for tag in variant.techniques:
        for key in TECHNIQUE_KEYS[tag]:
            meta[key] = on_values[key]
    meta.update({"bn_mode": "transductive", "second_order": True})
    meta.update(variant.fixed)
    return meta


def parse_variants(text: str) -> list[Variant]:
    if text.strip() == "all":
        return list(GRID)
    chosen = []
    folders = {v.folder: v.name for v in GRID}  # run folder names work too ("mamlpp")
    for part in text.split(","):
        name = folders.get(part.strip(), part.strip())
        if name not in VARIANTS:
            close = difflib.get_close_matches(name, list(VARIANTS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown variant {name!r}{hint}; --list shows the grid")
        if VARIANTS[name] not in chosen:
            chosen.append(VARIANTS[name])
    return [v for v in GRID if v in chosen]

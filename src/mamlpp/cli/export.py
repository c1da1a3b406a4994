"""``mamlpp export``: a run's model (config, top-k weights, preprocessing) as one file."""

from __future__ import annotations

import argparse
from pathlib import Path

from mamlpp.errors import ConfigError
from mamlpp.util.format import file_size, plural


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a run's model (config, weights, preprocessing) as one file",
        description="Write RUN_DIR's top-k checkpoints, config and preprocessing as one file "
        "that mamlpp.load(), `mamlpp adapt` and `mamlpp serve` read: MODEL.safetensors "
        "(weights as safetensors, the rest as JSON metadata; recommended) or MODEL.pt (the "
        "earlier format, a dict torch.load(weights_only=True) reads).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("out", metavar="MODEL.safetensors|MODEL.pt")
    parser.add_argument(
        "--top-k", type=int, default=1, metavar="K", help="checkpoints to include (default 1)"
    )
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ConfigError(f"folder {out.parent} does not exist")
    if out.suffix.lower() not in (".safetensors", ".pt"):
        raise ConfigError(f"the model file must end in .safetensors or .pt, got {out.name}")
    from mamlpp.run.output_guard import check_output_path
    from mamlpp.run.predictor import FewShotPredictor

    check_output_path(out, "the model file")
    predictor = FewShotPredictor.from_run(args.run_dir, args.top_k, "cpu")
    predictor.export(out)
    if len(predictor.members) < args.top_k:  # as `mamlpp evaluate` says it
        kept = plural(len(predictor.members), "checkpoint")
        print(f"note: --top-k {args.top_k}, but only {kept} kept in {args.run_dir}/checkpoints")
    size = file_size(out.stat().st_size)
    print(f"exported {', '.join(predictor.sources)} of {args.run_dir} to {out} ({size})")
    return 0

"""Run one trial: ``python -m tuneddml.train [--config FILE] [KEY=VALUE ...] [--json]``.

Examples::

    python -m tuneddml.train dataset=glyphs-tiny epochs=2 loss=supcon loss.lambda=0.3
    python -m tuneddml.train --config trial.yaml split=test --json
    python -m tuneddml.train --preset mlrc data_root=~/data/CUB_200_2011 loss=multi_similarity

Shows progress after every epoch (loss terms, metrics, time left); with ``--json`` the last line
is one JSON object with the final metrics. Bad input exits with code 2 and one line naming the
field; a diverged trial exits with code 1 ("diverged at epoch N").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence

from tuneddml.cli import first_paragraph, format_duration, format_values, guarded, parse_overrides
from tuneddml.config import TrialConfig, merge_flat
from tuneddml.errors import ConfigError, TrialDiverged


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuneddml.train", description=first_paragraph(__doc__))
    parser.add_argument("--config", help="JSON or YAML file of trial settings (flat or nested keys)")
    parser.add_argument(
        "--preset", help="start from a shipped preset (python -m tuneddml.catalog presets); --config and KEY=VALUE change it"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line of final metrics")
    parser.add_argument("--save", help="write the trained trial state (model, loss, optimiser) here")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="trial settings, e.g. loss=supcon")
    return parser


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = parse_overrides(args.overrides)
    base: Mapping[str, object] = {}
    if args.preset:
        from tuneddml.presets import read_preset

        base = read_preset(args.preset).settings
    if args.config:
        config = TrialConfig.from_file(args.config, overrides, base=base)
    else:
        config = TrialConfig.from_flat(merge_flat(base, overrides))
    if args.save:
        from pathlib import Path

        parent = Path(args.save).resolve().parent
        if not parent.is_dir():
            raise ConfigError("--save", args.save, "a path in an existing folder")

    from tuneddml.evaluation import shown_keys
    from tuneddml.training.folds import make_trainer

    shown = shown_keys()

    out = sys.stderr if args.json else sys.stdout
    print(
        f"trial: dataset={config.dataset} split={config.split} loss={config.loss} "
        f"sampler={config.sampler} backbone={config.backbone} epochs={config.epochs}",
        file=out,
        flush=True,
    )
    trainer = make_trainer(config)
    print(
        f"data: {len(trainer.data.train)} training items in {trainer.data.num_train_classes} classes; "
        f"evaluating on {len(trainer.data.query)} items of unseen classes; device={trainer.device}",
        file=out,
        flush=True,
    )

    def report(r, _trainer):  # type: ignore[no-untyped-def]
        print(
            f"epoch {r.epoch}/{r.epochs}  loss {format_values(r.terms)}  |  "
            f"{format_values(r.metrics, shown)}  |  {format_duration(r.train_seconds + r.eval_seconds)}"
            f"/epoch, ~{format_duration(r.eta)} left",
            file=out,
            flush=True,
        )

    try:
        result = trainer.run(report)
    except TrialDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"status": "diverged", "epoch": exc.epoch, "error": str(exc)}))
        return 1
    if args.save:
        trainer.save(args.save)
    print(f"done in {format_duration(result.seconds)}: {format_values(result.metrics)}", file=out, flush=True)
    if args.json:
        print(
            json.dumps(
                {
                    "status": "finished",
                    "epochs": trainer.epoch,
                    "seconds": round(result.seconds, 2),
                    "metrics": result.metrics,
                    "config": config.to_flat(),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

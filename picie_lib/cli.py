"""Command line: ``python -m picie_lib {run,train,evaluate,compare,prepare,pretext} ...``.

    python -m picie_lib run --preset demo            # the notebooks, executed, with report.md
    python -m picie_lib train --preset demo --loss ib_focal --out outputs/ib
    python -m picie_lib evaluate outputs/ib
    python -m picie_lib compare --preset demo --out outputs/compare

``-p KEY=VALUE`` overrides any parameter of the preset (VALUE is read as YAML).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from picie_lib.config import LOSSES, load_preset, parse_override


def _config(args: argparse.Namespace, **extra):
    overrides = dict(parse_override(p) for p in args.param)
    return load_preset(args.preset, **{**overrides, **extra})


def cmd_train(args: argparse.Namespace) -> None:
    from picie_lib.train import train

    extra = {"loss": args.loss}
    if args.epochs is not None:
        extra[f"epochs_{args.loss}"] = args.epochs
    cfg = _config(args, **extra)
    summary = train(cfg, Path(args.out), resume=args.resume, overwrite=args.overwrite)
    print(
        f"trained {cfg.loss} for {summary['epochs']} epochs into {args.out}"
        + (f" (IB-Focal from epoch {summary['switch_epoch']})" if cfg.loss == "ib_focal" else "")
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from picie_lib.evaluate import evaluate_run

    result = evaluate_run(Path(args.run_dir), force=args.force)
    print(" ".join(f"{k}={v:.2f}" for k, v in result["scores"].items()))
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")


def cmd_compare(args: argparse.Namespace) -> None:
    from picie_lib.compare import compare, table2_markdown

    start = time.perf_counter()
    rows = compare(_config(args), Path(args.out), overwrite=args.overwrite, resume=args.resume)
    print(table2_markdown(rows))
    print(f"\nwrote {args.out}/results.{{csv,json,md,png}} in {(time.perf_counter() - start) / 60:.1f} min")


def cmd_run(args: argparse.Namespace) -> None:
    from picie_lib.pipeline import run

    overrides = dict(parse_override(p) for p in args.param)
    start = time.perf_counter()
    if args.resume and not args.out:
        raise ValueError("--resume needs the --out of the run to continue")
    out = run(args.preset, Path(args.out) if args.out else None, overrides, args.overwrite, args.resume)
    print((out / "results.md").read_text())
    print(f"wrote {out}/report.md and the executed notebooks in {(time.perf_counter() - start) / 60:.1f} min")


def cmd_pretext(args: argparse.Namespace) -> None:
    from picie_lib.pretext import pretrain_backbone

    path = pretrain_backbone(Path(args.out), n_images=args.images, epochs=args.epochs, seed=args.seed)
    print(f"use it with -p pretrained={path}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from picie_lib.data.prepare import PREPARE

    options = {"class_table": args.class_table} if args.dataset == "folder" else {}
    report = PREPARE[args.dataset](Path(args.root), verify=args.verify, **options)
    if not report["ok"]:
        raise ValueError(f"{args.root}: {len(report['problems'])} problem(s), listed above")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m picie_lib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def preset_args(p: argparse.ArgumentParser, out_required: bool = True) -> None:
        p.add_argument("--preset", default="demo", help="smoke, demo, paper, or the path of a .yaml parameter file")
        p.add_argument(
            "-p",
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one parameter (repeatable)",
        )
        p.add_argument(
            "--out",
            required=out_required,
            help="output folder of the run" + ("" if out_required else " (default outputs/<preset>-<time>)"),
        )
        p.add_argument("--overwrite", action="store_true", help="replace what --out already holds")
        p.add_argument(
            "--resume", action="store_true", help="continue the run in --out: keep what it finished, resume the rest"
        )

    p = sub.add_parser("run", help="execute the notebooks (papermill): every method, the comparison, report.md")
    preset_args(p, out_required=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train one method")
    preset_args(p)
    p.add_argument("--loss", choices=LOSSES, required=True)
    p.add_argument("--epochs", type=int, help="epochs of this run (default: the preset's for the loss)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="fresh k-means on train, scores on val, for a trained run")
    p.add_argument("run_dir")
    p.add_argument(
        "--force", action="store_true", help="score an unfinished run or a checkpoint of another configuration"
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="the three methods and the reference points, with Table 2")
    preset_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("prepare", help="check an on-disk data set (layout, labels, curated lists) and count it")
    p.add_argument("dataset", choices=("cocostuff", "cityscapes", "folder"))
    p.add_argument("root", help="the data set's root folder (README, 'Real data')")
    p.add_argument("--verify", action="store_true", help="decode every image and label map a run reads (slow)")
    p.add_argument("--class-table", help="folder: the class table file (default ROOT/classes.yaml)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "pretext", help="pretrain a backbone on built-in texture scenes (no demo class), for -p pretrained="
    )
    p.add_argument("--out", required=True, help="the state dict to write (reused when its parameters match)")
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pretext)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        print("error: --resume continues what --out holds, --overwrite replaces it: choose one", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a failed notebook, a non-finite loss: the run stopped
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0

"""Command line: ``python -m picie_lib {run,train,evaluate,compare,prepare,notebook,pretext,runtimes} ...``.

    python -m picie_lib run --preset demo            # the notebooks, executed, with report.md
    python -m picie_lib notebook 06_evaluate out.ipynb -p loss=focal   # one notebook, its own parameters
    python -m picie_lib train --preset demo --loss ib_focal --out outputs/ib
    python -m picie_lib evaluate outputs/ib
    python -m picie_lib compare --preset demo --out outputs/compare

``-p KEY=VALUE`` overrides any parameter of the preset (VALUE is read as YAML).
"""

from __future__ import annotations

import argparse
import atexit
import errno
import os
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path

from picie_lib import distributed
from picie_lib.config import LOSSES, load_config, load_preset, parse_overrides
from picie_lib.run_folder import holds_a_run


def _config(args: argparse.Namespace, **extra):
    """The command's configuration; under torchrun, this process joins the others here."""
    cfg = load_preset(args.preset, overrides_source="-p", **{**parse_overrides(args.param), **extra})
    distributed.setup(cfg.device)
    return cfg


def say(text: str) -> None:
    """Print a command's result once: under torchrun, from rank 0."""
    if distributed.is_main():
        print(text)


def cmd_train(args: argparse.Namespace) -> None:
    from picie_lib.train import train

    if args.resume and not holds_a_run(Path(args.out)):
        raise FileNotFoundError(f"{args.out}: no run there to resume; start one without --resume")
    extra = {"loss": args.loss}
    if args.epochs is not None:
        extra[f"epochs_{args.loss}"] = args.epochs
    cfg = _config(args, **extra)
    summary = train(cfg, Path(args.out), resume=args.resume, overwrite=args.overwrite)
    say(
        f"trained {cfg.loss} for {summary['epochs']} epochs into {args.out}"
        + (f" (IB-Focal from epoch {summary['switch_epoch']})" if cfg.loss == "ib_focal" else "")
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from picie_lib.scores import evaluate_run, run_config_path

    distributed.setup(load_config(run_config_path(Path(args.run_dir))).device)
    given = (("eval_seeds", args.eval_seeds), ("eval_kmeans_restarts", args.restarts))
    evaluation = {k: v for k, v in (*given, ("eval_kmeans_init_batches", args.init_batches)) if v}
    result = evaluate_run(Path(args.run_dir), force=args.force, evaluation=evaluation)
    say(" ".join(f"{k}={v:.2f}" for k, v in result["scores"].items()))
    spread = result["eval_spread"]
    if len(spread["seeds"]) > 1:
        acc, miou = spread["acc_all"], spread["miou_all"]
        say(
            f"the mean of {len(spread['seeds'])} k-means seeds on these weights: one draw's All Acc spreads "
            f"± {acc['std']:.2f} (range {acc['range']:.2f}), mIoU ± {miou['std']:.2f} (range {miou['range']:.2f}); "
            f"the scores' standard error: All Acc {acc['se']:.2f}, mIoU {miou['se']:.2f}"
        )
    say(f"wrote {Path(args.run_dir) / 'metrics.json'}")


def cmd_compare(args: argparse.Namespace) -> None:
    from picie_lib.compare import compare, table2_markdown

    start = time.perf_counter()
    rows = compare(_config(args), Path(args.out), overwrite=args.overwrite, resume=args.resume)
    say(table2_markdown(rows))
    say(f"\nwrote {args.out}/results.{{csv,json,md,png}} in {(time.perf_counter() - start) / 60:.1f} min")


def cmd_run(args: argparse.Namespace) -> None:
    from picie_lib.pipeline import default_out_dir, run

    if distributed.launched():
        raise ValueError("run executes notebooks in one process; under torchrun use train, evaluate or compare")
    start = time.perf_counter()
    if args.resume and not args.out:
        raise ValueError("--resume needs the --out of the run to continue")
    args.out = args.out or str(default_out_dir(args.preset))  # named in the message if it is interrupted
    out = run(args.preset, Path(args.out), parse_overrides(args.param), args.overwrite, args.resume)
    say((out / "results.md").read_text())
    say(f"wrote {out}/report.md and the executed notebooks in {(time.perf_counter() - start) / 60:.1f} min")


def cmd_pretext(args: argparse.Namespace) -> None:
    from picie_lib.pretext import pretrain_backbone

    path = pretrain_backbone(Path(args.out), n_images=args.images, epochs=args.epochs, seed=args.seed)
    say(f"use it with -p pretrained={path}")


def cmd_runtimes(args: argparse.Namespace) -> None:
    from picie_lib.report import RUNTIMES, publish_runtimes

    table = publish_runtimes(Path(args.run_dir))
    say(
        f"wrote {RUNTIMES} and the runtime line of every notebook: {table['machine']}, {table['date']}, "
        f"whole run {table['wall_seconds'] / 60:.1f} min"
    )


def cmd_notebook(args: argparse.Namespace) -> None:
    from picie_lib.pipeline import check_notebook_parameters, execute
    from picie_lib.run_folder import exclusive, holds_a_run, start_manifest

    given = parse_overrides(args.param)
    check_notebook_parameters(args.name, given)  # before papermill: a bad value is exit 2, not a failed kernel
    for key in ("out_dir", "run_dir"):  # read from here, not from notebooks/ where the kernel runs
        if isinstance(given.get(key), str):
            given[key] = str(Path(given[key]).resolve())
    output = Path(args.output).resolve()
    with exclusive(output.parent):  # a new or empty folder becomes this command's: running it again rewrites it
        if not holds_a_run(output.parent):
            start_manifest(output.parent)
        execute(args.name, output, given)
    say(f"wrote {output} and {output.with_suffix('.html')}")


def cmd_lab(args: argparse.Namespace) -> None:
    from picie_lib.lab import lab_command, working_copy

    run = Path(args.run).resolve() if args.run else None
    folder = working_copy(run)
    os.environ["PICIE_NOTEBOOK_OUT"] = str(run or (folder.parent / "notebooks"))  # the notebooks' default out_dir
    command = lab_command(folder)
    say(f"JupyterLab on {folder} (working copies; the tracked notebooks stay as they are): {' '.join(command)}")
    if not args.dry_run:
        os.execv(command[0], command)


def cmd_prepare(args: argparse.Namespace) -> None:
    from picie_lib.data.prepare import PREPARE

    options = {"class_table": args.class_table} if args.dataset == "folder" else {}
    if args.dataset == "cocostuff":
        options["curated"] = args.curated
    elif not args.curated:
        raise ValueError(f"--no-curated: {args.dataset} has no curated lists (only cocostuff does)")
    report = PREPARE[args.dataset](Path(args.root), verify=args.verify, **options)
    if not report["ok"]:
        raise ValueError(f"{args.root}: {len(report['problems'])} problem(s), listed above")


def _preset_args(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    """The options of the commands that start a run: preset, parameters, output folder."""
    p.add_argument("--preset", default="demo", help="smoke, demo, paper, or the path of a .yaml parameter file")
    p.add_argument(
        "-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="override one parameter (repeatable)"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m picie_lib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the notebooks (papermill): every method, the comparison, report.md")
    _preset_args(p, out_required=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train one method")
    _preset_args(p)
    p.add_argument("--loss", choices=LOSSES, required=True)
    p.add_argument("--epochs", type=_positive, help="epochs of this run (default: the preset's for the loss)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="fresh k-means on train, scores on val, for a trained run")
    p.add_argument("run_dir")
    p.add_argument(
        "--force", action="store_true", help="score an unfinished run or a checkpoint of another configuration"
    )
    _evaluation_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="the three methods and the reference points, with Table 2")
    _preset_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("prepare", help="check an on-disk data set (layout, labels, curated lists) and count it")
    p.add_argument("dataset", choices=("cocostuff", "cityscapes", "folder"))
    p.add_argument("root", help="the data set's root folder (docs/real-data.md)")
    p.add_argument("--verify", action="store_true", help="decode every image and label map a run reads (slow)")
    p.add_argument("--class-table", help="folder: the class table file (default ROOT/classes.yaml)")
    p.add_argument(
        "--curated",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cocostuff: check the curated images (a run's default) or, with --no-curated, every image, as "
        "a run with -p curated=false reads them",
    )
    p.set_defaults(func=cmd_prepare)

    _upkeep_commands(sub)
    return parser


def _upkeep_commands(sub) -> None:
    """The commands around the method's: one notebook, the pretext backbone, the notebooks' runtimes."""
    p = sub.add_parser("notebook", help="execute one notebook with its parameters (quiet kernel), and its HTML copy")
    p.add_argument("name", help="a notebook of notebooks/ without .ipynb, e.g. 06_evaluate")
    p.add_argument("output", help="the executed copy to write (.ipynb; the .html beside it)")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value of the parameters cell, as YAML: -p loss=focal -p 'params={temperature: 1.0}'",
    )
    p.set_defaults(func=cmd_notebook)

    p = sub.add_parser(
        "pretext", help="pretrain a backbone on built-in texture scenes (no demo class), for -p pretrained="
    )
    p.add_argument("--out", required=True, help="the state dict to write (reused when its parameters match)")
    p.add_argument("--images", type=_positive, default=4096)
    p.add_argument("--epochs", type=_positive, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pretext)

    p = sub.add_parser("lab", help="JupyterLab on working copies: a run's executed notebooks, or a scratch copy")
    p.add_argument("run", nargs="?", help="a finished run's folder (make demo's); none: a scratch copy in outputs/lab")
    p.add_argument("--dry-run", action="store_true", help="make the working copy and print the command, start nothing")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser(
        "runtimes", help="make a finished `run --preset demo`'s seconds the notebooks' stated runtimes (tracked files)"
    )
    p.add_argument("run_dir", help="the --out of a whole `python -m picie_lib run --preset demo` without -p")
    p.set_defaults(func=cmd_runtimes)


def _evaluation_args(p: argparse.ArgumentParser) -> None:
    """evaluate's own parameters (``config.EVALUATION_KEYS``; eval_batch_size stays the run's), as flags."""
    p.add_argument(
        "--eval-seeds",
        type=_positive,
        default=None,
        metavar="N",
        help="score the same weights by the mean of N k-means draws (eval_seeds; metrics.json: eval_spread)",
    )
    p.add_argument(
        "--restarts",
        type=_positive,
        default=None,
        metavar="R",
        help="starts of each k-means, the lowest inertia kept (eval_kmeans_restarts)",
    )
    p.add_argument(
        "--init-batches",
        type=_positive,
        default=None,
        metavar="B",
        help="batches in the k-means' initial fit (eval_kmeans_init_batches; the train split's count: all pixels)",
    )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return int(text)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` runs (temporary files removed, the
    folder's lock released), as Ctrl-C's KeyboardInterrupt does."""


def what_was_saved(args: argparse.Namespace) -> str:
    """One sentence on what an interrupted command leaves, and how to go on from it."""
    out = Path(getattr(args, "out", None) or getattr(args, "run_dir", None) or ".")
    if args.command == "evaluate":  # the same command, every option kept
        again = " ".join(["python -m picie_lib", *map(shlex.quote, args.argv)])
        return f"nothing written (metrics.json is written whole at the end); again: {again}"
    if args.command not in ("train", "compare", "run") or not holds_a_run(out):
        return "nothing to keep"
    argv = [a for a in args.argv if a not in ("--overwrite", "--resume")]
    if args.command == "run" and "--out" not in argv:
        argv += ["--out", str(out)]
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun, continued by torchrun with as many processes
    again = distributed.command_line(world, distributed.processes_per_node(), [*argv, "--resume"])
    if args.command == "train":
        epoch = _saved_epoch(out / "checkpoint.pt")
        saved = f"{epoch} is saved in {out / 'checkpoint.pt'}" if epoch else "no epoch had finished"
    else:
        finished = sorted(p.parent.name for p in out.glob("*/summary.json"))
        ongoing = {p.parent.name: _saved_epoch(p) for p in out.glob("*/checkpoint.pt") if p.parent.name not in finished}
        saved = f"{len(finished)} training(s) finished in {out}" + "".join(
            f"; {name} saved at {epoch}" for name, epoch in sorted(ongoing.items()) if epoch
        )
    return f"{saved}; continue with: {again}"


def _saved_epoch(path: Path) -> str | None:
    """ "epoch E of N" of the checkpoint at ``path``, or None when there is none to resume from."""
    import torch

    from picie_lib.config import from_dict

    try:  # mmap: the epoch without reading the weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return f"epoch {ckpt['epoch']} of {from_dict(ckpt['config']).epochs_for()}"
    except Exception:  # no checkpoint, or one cut short: nothing to name
        return None


def os_error_line(err: OSError, command: str = "train") -> str:
    """One line for a failed read or write, naming the path and what to do."""
    where = err.filename or "a file"
    if err.errno == errno.ENOSPC:
        if command in ("train", "compare", "run"):
            return (
                f"no space left on the device holding {where}; free some space (the last complete checkpoint "
                "is intact) and run the same command again with --resume"
            )
        return f"no space left on the device holding {where}; free some space and run the same command again"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {where} ({err.strerror}); choose a writable --out"
    if err.errno == errno.EMLINK:
        return f"{where} is a hard link: writing it would change the file behind its other names; remove it"
    if err.errno == errno.ELOOP:
        return f"{where} is a symbolic link; a run writes its own files, never through a link: remove the link"
    if err.errno == errno.ENOTDIR or isinstance(err, NotADirectoryError):
        return str(err) if not err.filename else f"{where}: a path that should be a folder is a file"
    return f"{where}: {err.strerror or err}"


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: ``warning: TEXT`` on one line, without the source line
    Python quotes (often torch's own, which says nothing to the reader)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    distributed.end_with_the_launcher()  # first: a launcher killed from here on takes this process with it
    atexit.register(distributed.trace, "exiting")  # PICIE_DIST_DEBUG=1: how long the exit takes
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        print("error: --resume continues what --out holds, --overwrite replaces it: choose one", file=sys.stderr)
        return 2
    stop = {signal.SIGINT: ("interrupted (Ctrl-C)", 130), signal.SIGTERM: ("stopped by SIGTERM", 143)}
    received: list[int] = []

    def on_signal(signum, frame):
        if received:  # already stopping (timeout and kill send twice, Ctrl-C pressed again): let it finish
            return
        received.append(signum)
        if args.command == "run":
            from picie_lib.pipeline import stop_kernels

            stop_kernels()
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    previous = {s: signal.signal(s, on_signal) for s in stop}
    formatwarning, warnings.formatwarning = warnings.formatwarning, one_line_warning
    prefix = ""  # under torchrun, "[rank R] " for the processes other than rank 0
    try:
        if distributed.launched() and os.environ.get("RANK", "0") != "0":
            prefix = f"[rank {os.environ['RANK']}] "
        args.func(args)
        distributed.trace(f"{args.command} done")
    except (KeyboardInterrupt, Terminated):
        if not received:  # a KeyboardInterrupt raised before the handler was in place
            received.append(signal.SIGINT)
    except BaseException as err:
        if received:  # a data-loader worker killed by the same SIGTERM may fail first
            pass
        elif isinstance(err, (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError)):
            print(f"{prefix}error: {err}", file=sys.stderr)
            return 2
        elif isinstance(err, OSError):
            print(f"{prefix}error: {os_error_line(err, args.command)}", file=sys.stderr)
            return 1
        elif distributed.lost_another_process(err):
            print(f"{prefix}{distributed.lost_process_line(err)}", file=sys.stderr)
            return 1
        elif isinstance(err, RuntimeError):  # a failed notebook, a non-finite loss: the run stopped
            print(f"{prefix}error: {err}", file=sys.stderr)
            return 1
        else:
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        warnings.formatwarning = formatwarning
        distributed.teardown()
    if received:
        what, code = stop[received[0]]
        if not prefix:  # torchrun stops every process; rank 0 says what is left
            print(f"{what}: {what_was_saved(args)}", file=sys.stderr)
        return code
    return 0

"""`elmrec` command line: run the pipeline, or one stage of it, locally.

    elmrec run  [--preset demo] [--dataset beauty] [--mirror DIR] ...   the whole flow, no server needed
    elmrec task preprocess [same options]                                one stage on the work dir's outputs
    elmrec run --stages evaluate --set eval.sequential_beams=50          rerun one stage with other settings
    elmrec serve | stop | ui      a local Prefect server + worker for `prefect deployment run`; the MLflow UI
    elmrec compare [--run ID] [--csv FILE]   the comparison table of a flow run (default: the latest), from MLflow
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from elmrec.app import serve
from elmrec.config import PRESETS, VARIANTS, Stage, deep_merge, settings_for, variant_settings
from elmrec.paths import NotWritableError, WorkPaths, ensure_writable
from elmrec.stages import missing_upstream

EPILOG = """\
examples:
  elmrec run --preset demo --mirror ../shared/data          the demo pipeline, data from a local mirror
  elmrec run --preset paper --dataset sports --workdir /data/elmrec
  elmrec task graph --graph-edges all                       rebuild one stage (here: a leaky graph)
  elmrec run --set train.lr=5e-4 --set eval.split=valid     any setting, as dotted.key=value (JSON values)

environment: ELMREC_WORKDIR (default ./work), ELMREC_MIRROR (data mirror), ELMREC_MODEL_MIRROR (model folders)
"""


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="settings preset (default: demo)")
    parser.add_argument("--workdir", help="where every artifact goes (default: $ELMREC_WORKDIR or ./work)")
    parser.add_argument("--dataset", help="beauty | sports | toys (p5), a category (amazon2014), any name (local)")
    parser.add_argument("--source", choices=["p5", "amazon2014", "local"], help="where raw files come from")
    parser.add_argument("--mirror", help="folder or URL replacing the public base location ($ELMREC_MIRROR)")
    parser.add_argument("--path", help="the folder in P5 layout, for --source local")
    parser.add_argument("--category", help="Amazon 2014 category, e.g. Beauty (default: from --dataset)")
    parser.add_argument("--seed", type=int, help="seed of every random choice")
    parser.add_argument("--id-scheme", choices=["p5", "shuffled"], help="shuffled removes the item-ID order leak")
    parser.add_argument("--graph-edges", choices=["train", "all"], help="all leaks evaluation edges into the graph")
    parser.add_argument("--max-users", type=int, help="keep the first N users only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any setting by dotted name, value parsed as JSON when it can be (repeatable)")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The nested overrides dict the command-line options describe."""
    flat = {"workdir": args.workdir, "seed": args.seed, "data.dataset": args.dataset, "data.source": args.source,
            "data.mirror": args.mirror, "data.path": args.path, "data.category": args.category,
            "data.id_scheme": args.id_scheme, "data.graph_edges": args.graph_edges, "data.max_users": args.max_users}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            flat[key] = json.loads(raw)
        except json.JSONDecodeError:
            flat[key] = raw
    overrides: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        overrides = deep_merge(overrides, nested)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elmrec", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the whole pipeline locally (a temporary Prefect server is enough)")
    add_settings_options(run)
    run.add_argument("--stages", nargs="+", choices=[s.value for s in Stage], help="run only these stages")
    run.add_argument("--force", nargs="+", choices=[s.value for s in Stage], default=[],
                     help="rerun these stages even if their inputs, settings and code are unchanged")
    run.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="models to train and evaluate")
    one = commands.add_parser("task", help="run one stage alone on the outputs already in the work dir")
    one.add_argument("stage", choices=[s.value for s in Stage])
    add_settings_options(one)
    one.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="models to train and evaluate")
    one.add_argument("--cached", action="store_true", help="skip the stage if its inputs and settings are unchanged")
    for command in (run, one):
        command.add_argument("--fresh", action="store_true",
                             help="train from scratch instead of continuing an interrupted training")
        command.add_argument("--allow-unfinished", action="store_true",
                             help="evaluate a training that has not finished (its best model so far)")
    serve.add_commands(commands)  # serve | stop | ui: local Prefect server + worker, MLflow UI
    table = commands.add_parser("compare", help="print the comparison table of a flow run, read from MLflow")
    table.add_argument("--run", help="MLflow run id, Prefect flow-run id or flow-run name (default: the latest)")
    table.add_argument("--csv", metavar="FILE", help="also write the table's rows to FILE as CSV")
    table.add_argument("--workdir", help="the work dir holding mlflow.db (default: $ELMREC_WORKDIR or ./work)")
    return parser


def compare_command(args: argparse.Namespace) -> int:
    """`elmrec compare`: the table of a flow run (elmrec.compare), printed; `--csv` writes its rows."""
    from elmrec.compare import NoRunError, comparison  # imports MLflow: only for this command

    settings = settings_for("demo", {"workdir": args.workdir} if args.workdir else {})
    try:
        found = comparison(settings, args.run)
    except NoRunError as error:
        print(f"elmrec: {error}", file=sys.stderr)
        return 1
    print(f"{found.parent['name']} (MLflow run {found.parent['run_id']}, {found.split})\n\n{found.markdown()}")
    if args.csv:
        print(f"\nwrote {found.write_csv(Path(args.csv))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting make small ops up to ~50x slower on a busy 2-core machine;
    # set before torch is imported (also inherited by `elmrec serve`'s worker and its flow runs).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    if args.command in serve.COMMANDS:
        return serve.run_command(args)
    if args.command == "compare":
        return compare_command(args)
    overrides = overrides_from(args)
    try:
        settings = settings_for(args.preset, overrides)
        runs = [variant_settings(settings, name) for name in args.variants or ["elmrec"]]
    except (ValidationError, ValueError) as error:
        print(f"elmrec: invalid settings:\n{error}", file=sys.stderr)
        return 2
    try:
        ensure_writable(settings.workdir)  # at once, not minutes later through MLflow's retries
    except NotWritableError as error:
        print(f"elmrec: {error}", file=sys.stderr)
        return 2
    if args.command == "task":
        stages, force = [Stage(args.stage)], [] if args.cached else [Stage(args.stage)]
        for variant in runs:
            missing = missing_upstream(variant, args.stage)
            attempt = WorkPaths.from_settings(variant).run(variant).attempt.checkpoint
            if missing and missing[1] == "train" and args.allow_unfinished and attempt.is_dir():
                missing = None  # the unfinished training's best model so far will do
            if missing:
                path, producer = missing
                print(f"elmrec: {path} is missing; run `elmrec task {producer}` first (same options)",
                      file=sys.stderr)
                return 2
    else:
        stages, force = [Stage(s) for s in args.stages or []] or None, [Stage(s) for s in args.force]
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "elmrec")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # library logs outside a run
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    flow = load_flow()  # Prefect is imported only when a flow actually runs
    flow(preset=args.preset, overrides=overrides, variants=args.variants, stages=stages, force=force,
         fresh=args.fresh, allow_unfinished=args.allow_unfinished)
    return 0


def load_flow() -> Any:
    """The `elmrec` flow of this checkout (flows/ and tasks/ are folders of the checkout, not installed)."""
    checkout = str(serve.default_checkout())
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    from flows.elmrec import elmrec

    return elmrec


if __name__ == "__main__":
    sys.exit(main())

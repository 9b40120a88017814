"""`elmrec` command line: run the pipeline, or one stage of it, locally.

    elmrec run  [--preset demo] [--dataset beauty] [--mirror DIR] ...   the whole flow, no server needed
    elmrec task preprocess [same options]                                one stage on the work dir's outputs
    elmrec run --stages evaluate --set eval.sequential_beams=50          rerun one stage with other settings
    elmrec serve | stop | ui      a local Prefect server + worker for `prefect deployment run`; the MLflow UI
    elmrec compare [--run ID] [--csv FILE]   the comparison table of a flow run (default: the latest), from MLflow
    elmrec recommend --user ID [--k 10] [--run ID | --model URI]   top-k items for users from a trained model

`run` and `task` end with the comparison table and the MLflow (and Prefect) links; a failure a user can fix ends
with one `error: …` line, exit status 2 (Ctrl-C: 130), the traceback in a log file under the work dir
(elmrec.app.errors). With `elmrec serve` up for the work dir, they run on its server (elmrec.app.prefect_env).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from elmrec.app import serve
from elmrec.app.config_file import read_config
from elmrec.app.errors import LogFile, divert_errors, is_expected, report
from elmrec.app.interrupts import prompt_interrupts, shielded_temporary_server
from elmrec.app.prefect_env import use_server
from elmrec.config import PRESETS, VARIANTS, Settings, Stage, deep_merge, settings_for, variant_settings
from elmrec.paths import ensure_writable
from elmrec.stages import check_upstream

EPILOG = """\
examples:
  elmrec run --preset demo --mirror ../shared/data          the demo pipeline, data from a local mirror
  elmrec run --preset paper --dataset sports --workdir /data/elmrec
  elmrec task graph --graph-edges all                       rebuild one stage (here: a leaky graph)
  elmrec run --set train.lr=5e-4 --set eval.split=valid     any setting, as dotted.key=value (JSON values)
  elmrec run --config config.yaml                           replay a run's logged config.yaml (MLflow artifact)
  elmrec recommend --user A1YJEY40YUW4SE --k 5              the work dir's model (same options as its run)
  elmrec recommend --user A1YJEY40YUW4SE --model models:/elmrec-beauty/1    a registered model

precedence of settings: command-line options > --config file > --preset (or the file's `preset:`) > defaults
exit status: 0 done, 2 an error to fix (one `error: …` line; traceback in <workdir>/logs/), 130 Ctrl-C

environment: ELMREC_WORKDIR (default ./work), ELMREC_MIRROR (data mirror), ELMREC_MODEL_MIRROR (model folders)
"""


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="settings preset (default: the --config file's `preset:`, else demo)")
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="nested settings overrides, e.g. a run's logged config.yaml; options override it")
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
        command.add_argument("--verbose", action="store_true",
                             help="tracebacks and Prefect's error records on the terminal, not in the log file")
    serve.add_commands(commands)  # serve | stop | ui: local Prefect server + worker, MLflow UI
    table = commands.add_parser("compare", help="print the comparison table of a flow run, read from MLflow")
    table.add_argument("--run", help="MLflow run id, Prefect flow-run id or flow-run name (default: the latest)")
    table.add_argument("--csv", metavar="FILE", help="also write the table's rows to FILE as CSV")
    table.add_argument("--workdir", help="the work dir holding mlflow.db (default: $ELMREC_WORKDIR or ./work)")
    add_recommend_command(commands)
    return parser


def add_recommend_command(commands: Any) -> None:
    recommend = commands.add_parser("recommend", help="top-k items for users from a trained model, history excluded",
                                    description="Without --run or --model: the finished training in the work dir "
                                                "of the settings the options describe (as `elmrec task`).")
    recommend.add_argument("--user", action="append", required=True, metavar="ID",
                           help="a reviewer ID of the dataset (repeatable)")
    recommend.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    source = recommend.add_mutually_exclusive_group()
    source.add_argument("--run", metavar="RUN_ID", help="the MLflow run (a variant's child run) that logged the model")
    source.add_argument("--model", metavar="URI", help="an MLflow model URI, e.g. models:/elmrec-beauty/1")
    add_settings_options(recommend)
    recommend.add_argument("--variant", choices=sorted(VARIANTS), default="elmrec",
                           help="which variant's model of the work dir (default elmrec)")
    recommend.add_argument("--allow-unfinished", action="store_true",
                           help="use the best model so far of a training that has not finished")
    recommend.add_argument("--verbose", action="store_true", help="the traceback of an error, not one line")


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


def recommend_command(args: argparse.Namespace) -> int:
    """`elmrec recommend`: the table of elmrec.recommend for the given users, from the work dir's run of the
    settings, or from a logged MLflow model (elmrec.registry); an unknown user is an `error: …` line, exit 2."""
    from elmrec.recommend import format_table, from_run  # imports torch: only for this command

    try:
        preset, overrides = resolve(args)
        settings = variant_settings(settings_for(preset, overrides), args.variant)
        if args.run or args.model:
            from elmrec.registry import recommend_from  # imports MLflow

            uri = args.model or f"runs:/{args.run}/model"
            table = recommend_from(settings, uri, args.user, args.k)
        else:
            check_upstream(settings, "evaluate", allow_unfinished=args.allow_unfinished)  # the model and its data
            table = from_run(settings, allow_unfinished=args.allow_unfinished).recommend(args.user, args.k)
    except Exception as error:
        if is_expected(error):
            return report(error, None, args.verbose)
        raise
    print(format_table(table), flush=True)
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
    if args.command == "recommend":
        return recommend_command(args)
    log: LogFile | None = None
    try:
        with prompt_interrupts():
            preset, overrides = resolve(args)
            settings = settings_for(preset, overrides)
            runs = [variant_settings(settings, name) for name in args.variants or ["elmrec"]]
            ensure_writable(settings.workdir)  # at once, not minutes later through MLflow's retries
            stages, force = plan(args, runs)
            log = LogFile(settings.workdir)  # a traceback worth keeping comes from the flow: errors before are plain
            result, prefect_ui = run_flow(args, preset, overrides, stages, force, log, settings.workdir)
            print_summary(settings, result, prefect_ui)
        return 0
    except (Exception, KeyboardInterrupt) as error:
        if isinstance(error, KeyboardInterrupt) or is_expected(error):
            return report(error, log, args.verbose)
        raise
    finally:
        if log is not None:
            log.close()


def resolve(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(preset, overrides): command-line options over the --config file over the preset (elmrec.app.config_file)."""
    preset, from_file = read_config(Path(args.config)) if args.config else (None, {})
    return args.preset or preset or "demo", deep_merge(from_file, overrides_from(args))


def plan(args: argparse.Namespace, runs: list[Settings]) -> tuple[list[Stage] | None, list[Stage]]:
    """(stages, force) of the flow call; `elmrec task` first checks the stage's inputs are there."""
    if args.command != "task":
        return [Stage(s) for s in args.stages or []] or None, [Stage(s) for s in args.force]
    for variant in runs:  # MissingUpstream (the flow checks the same before any task runs)
        check_upstream(variant, args.stage, allow_unfinished=args.allow_unfinished)
    return [Stage(args.stage)], [] if args.cached else [Stage(args.stage)]


def run_flow(args: argparse.Namespace, preset: str, overrides: dict[str, Any], stages: list[Stage] | None,
             force: list[Stage], log: LogFile, workdir: Path) -> tuple[dict[str, Any], str | None]:
    """The flow's result, and the Prefect UI's address when its server outlives this command (`elmrec serve`'s,
    or the one PREFECT_API_URL names) so that a link into it is worth printing."""
    server = use_server(workdir)  # before Prefect is imported
    if server:
        print(f"elmrec: running on the Prefect server of `elmrec serve`: {server}", file=sys.stderr)
    lasting = os.environ.get("PREFECT_API_URL", "").removesuffix("/").removesuffix("/api") or None
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "elmrec")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")  # library logs outside a run
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    flow = load_flow()  # Prefect is imported only when a flow actually runs
    # a Ctrl-C reaches this process, not the temporary server it reports to
    with nullcontext() if lasting else shielded_temporary_server(), \
            nullcontext() if args.verbose else divert_errors(log):  # after Prefect's logging setup
        result = flow(preset=preset, overrides=overrides, variants=args.variants, stages=stages, force=force,
                      fresh=args.fresh, allow_unfinished=args.allow_unfinished)
    return result, lasting


def print_summary(settings: Settings, result: dict[str, Any] | None, prefect_ui: str | None) -> None:
    """The last lines of a run: the comparison table (elmrec.compare rebuilds the one the flow published) and
    where to look further."""
    from elmrec import tracking
    from elmrec.compare import comparison
    from elmrec.tracking import FLOW_RUN_TAG

    if not result or not result.get("mlflow_run_id"):
        return
    found = comparison(settings, result["mlflow_run_id"])
    table = found.markdown() if any(row.metrics for row in found.rows) else "No evaluation in this run."
    flow_run = found.parent["tags"].get(FLOW_RUN_TAG)
    prefect = (f"{prefect_ui}/runs/flow-run/{flow_run}" if prefect_ui and flow_run else
               "a temporary server, gone (`elmrec serve` keeps flow runs in a UI)")
    ui = serve.mlflow_ui_url(settings.workdir)  # the port `elmrec serve --ui` took, when its UI runs
    mlflow = tracking.run_url(settings, found.parent["run_id"], ui or tracking.DEFAULT_UI)
    print(f"\n{found.parent['name']} ({found.split})\n\n{table}\n\n"
          f"MLflow:  {mlflow}{'' if ui else '  (open with: elmrec ui)'}\n"
          f"Prefect: {prefect}", flush=True)


def load_flow() -> Any:
    """The `elmrec` flow of this checkout (flows/ and tasks/ are folders of the checkout, not installed)."""
    checkout = str(serve.default_checkout())
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    from flows.elmrec import elmrec

    return elmrec


if __name__ == "__main__":
    sys.exit(main())

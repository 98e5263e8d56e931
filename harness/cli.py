"""`harness`: thin subcommands over the package's functions.

Heavy imports (torch, Ray) happen inside the commands that need them, so `harness list` and
`harness leaderboard` start instantly. A `HarnessError` is a user error: one paragraph on stderr, exit 2,
no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import textwrap
from pathlib import Path

from rich.console import Console
from rich.text import Text

from harness.config import setting
from harness.errors import HarnessError
from harness.heads import recipes
from harness.registry import load_registry
from harness.report.plain import printable

EXIT_USER_ERROR = 2
EXIT_FAILED_TRIALS = 1
EXIT_INTERRUPTED = 130


def _results_dir(args: argparse.Namespace) -> Path:
    return Path(args.results_dir) if args.results_dir else setting("results_dir")


def _arch(e) -> str:
    """The timm architecture, and what a demo variant shrinks of it (a tiny model is not a ViT-H)."""
    shrunk = {k: e.arch_overrides[k] for k in ("embed_dim", "depth") if k in e.arch_overrides}
    return e.arch + (f" shrunk to {', '.join(f'{k} {v}' for k, v in shrunk.items())}" if shrunk else "")


def _weights(e) -> str:
    """Where a backbone's weights come from; a `timm` entry says it is not checked against the official code."""
    if e.family == "timm":
        return "loaded by timm, not checked against the official code" + (f"; WARNING: {e.warning}" if e.warning else "")
    return "random-init (demo)" if e.random_init else ("manual download" if e.manual_download else "url")


def _list_rows(kind: str, reg) -> tuple[list[str], list[list[str]]]:
    if kind == "backbones":
        return ["name", "family", "arch", "input", "[cls]", "weights"], [
            [e.label, e.family, _arch(e), f"{e.img_size}px /{e.patch_size}", "yes" if e.class_token else "no",
             _weights(e)] for e in sorted(reg.backbones.values(), key=lambda e: (e.family, e.name))]
    if kind == "aggregators":
        return ["name", "kind", "tap", "description"], [
            [e.name, e.kind, e.tap, e.description] for e in reg.aggregators.values()]
    if kind == "datasets":
        return ["name", "source", "classes", "val hold-out", "description"], [
            [e.name, e.source, str(e.num_classes), f"{e.val_fraction:g} (seed {e.split_seed})", e.description]
            for e in reg.datasets.values()]
    if kind == "recipes":
        return ["name", "heads", "optimizer", "source"], [
            [r.name, ", ".join(r.kinds), r.optimizer, r.source] for r in recipes.RECIPES.values()]
    return ["name", "description"], [[name, reg.grid(name).description] for name in reg.grid_files]


def cmd_list(args: argparse.Namespace, console: Console) -> int:
    from harness.models.digests import read_lock
    from harness.registry.describe import KINDS, records
    from harness.report.terminal import print_table

    reg = load_registry()
    kinds = [args.kind] if args.kind else list(KINDS)
    if args.format == "json":
        lock = read_lock()
        _print_json({kind: records(kind, reg, lock) for kind in kinds})
        return 0
    for kind in kinds:
        headers, rows = _list_rows(kind, reg)
        print_table(console, headers, rows, title=kind)
    return 0


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    from harness.models.digests import read_lock
    from harness.registry.describe import find, record
    from harness.report.terminal import print_record

    reg = load_registry()
    kind = find(reg, args.name)
    rec = record(kind, reg, args.name, read_lock())
    if args.format == "json":
        _print_json({"kind": kind, **rec})
        return 0
    print_record(console, f"{kind[:-1]} {rec.get('label', args.name)}",
                 [(key, _show_value(value)) for key, value in rec.items() if key not in ("label",)])
    return 0


def _show_value(value) -> str:
    import json

    if value in ("", None, [], {}):
        return "—"
    return value if isinstance(value, str) else json.dumps(value)


def _print_json(data) -> None:
    """JSON on stdout, one document, NaN as null (strict parsers refuse NaN)."""
    import json
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    sys.stdout.write(json.dumps(clean(data), indent=2, default=str) + "\n")


def _parse_weights(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise HarnessError(f"--weights {pair!r} is not NAME=PATH; accepted: a registered backbone name, '=', "
                               "and the path of its checkpoint file.")
        if not Path(path).is_file():
            raise HarnessError(f"--weights {pair!r}: {path} is not a file.")
        if name in out:
            raise HarnessError(f"--weights names backbone {name!r} twice; accepted: one NAME=PATH per backbone.")
        out[name] = str(Path(path).resolve())
    return out


def _sweep_grid(args: argparse.Namespace, reg):
    """The grid named by --grid with --backbones, --datasets, --epochs, --seeds, --lrs and --limit-train applied."""
    from harness.run.quick import customise

    def split(text: str | None) -> list[str] | None:
        return text.split(",") if text else None

    quick = {k: getattr(args, k, None) for k in ("epochs", "seeds", "lrs", "limit_train")}  # `attention` has none
    return customise(reg.grid(args.grid), reg, backbones=split(args.backbones), datasets=split(args.datasets),
                     epochs=quick["epochs"], seeds=split(quick["seeds"]), lrs=split(quick["lrs"]),
                     limit_train=quick["limit_train"])


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    from harness.run.plan import expand, without_done
    from harness.results import store

    reg = load_registry()
    grid = _sweep_grid(args, reg)
    weights = _parse_weights(args.weights)
    for name in weights:
        if reg.backbone(name).random_init:
            raise HarnessError(f"--weights {name}=...: backbone {name!r} is a random-init demo variant and reads no "
                               "weights; accepted: --weights for an entry with released weights.")
    results_dir = _results_dir(args)
    if not args.dry_run and store.import_recovered(results_dir):
        console.print(f"Imported rows an earlier sweep could not store from {results_dir / store.RECOVERY}.")
    trials = expand(grid, reg, weights=weights)
    todo = trials if args.force else without_done(trials, store.completed_hashes(results_dir))
    if args.dry_run:
        _print_plan(console, trials, todo, store.read_results(results_dir, _MEASURED_COLUMNS))
        return 0
    total = sum(len(t.heads) for t in trials)
    if not todo:
        console.print(f"Nothing to run: all {total} heads of grid '{grid.name}' ({len(trials)} trials) already have "
                      f"results under {results_dir} (use --force to rerun them).")
        board, rows_written = results_dir / "leaderboard.md", store.last_write_ns(results_dir)
        if not args.no_leaderboard and rows_written and (not board.is_file() or board.stat().st_mtime_ns < rows_written):
            cmd_leaderboard(args, console)  # a sweep killed after its last trial left it stale or missing
        return 0
    from harness.run.manifest import describe_sweep
    from harness.run.preflight import hold_results_dir, preflight

    local = not (args.address or os.environ.get("RAY_ADDRESS"))
    checkpoint_dir = Path(args.checkpoint_dir).resolve() if args.checkpoint_dir else None
    preflight(todo, results_dir=results_dir, download=args.download, local=local,  # user errors before Ray starts
              checkpoint_dir=checkpoint_dir)
    lock = hold_results_dir(results_dir)  # noqa: F841 (held until this process ends)
    from harness.run.sweep import git_commit, run_sweep

    commit = git_commit()
    cache_dir = str(Path(args.cache_dir).resolve()) if args.cache_dir else None
    todo = [dataclasses.replace(t, provenance={"git_commit": commit}, cache_dir=cache_dir, download=args.download)
            for t in todo]
    heads = sum(len(t.heads) for t in todo)
    reason = "forced rerun" if args.force else (
        "no results yet" if heads == total else f"{total - heads} heads already have results and are skipped")
    console.print(f"Grid '{grid.name}': {len(todo)} of {len(trials)} trials, {heads} of {total} heads to run "
                  f"({reason}); results -> {results_dir}")
    summary = run_sweep(todo, results_dir=results_dir,
                        cpus_per_trial=grid.cpus_per_trial if args.cpus_per_trial is None else args.cpus_per_trial,
                        gpus_per_trial=grid.gpus_per_trial if args.gpus_per_trial is None else args.gpus_per_trial,
                        max_retries=grid.max_retries if args.max_retries is None else args.max_retries,
                        checkpoint_minutes=grid.checkpoint_minutes if args.checkpoint_minutes is None
                        else args.checkpoint_minutes,
                        checkpoint_dir=checkpoint_dir,
                        address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                        console=None if args.no_progress else console,
                        manifest=describe_sweep(grid, reg, commit=commit))
    ok = summary.trials - len(summary.failed) - len(summary.unfinished) - len(summary.user_errors)
    console.print(f"Sweep {'interrupted' if summary.unfinished else 'finished'} after {summary.wall_s:.1f} s: "
                  f"{ok} trials ok, {len(summary.failed)} failed, {len(summary.unfinished)} stopped before they "
                  f"finished, {len(summary.user_errors)} stopped by an error in their input. Manifest: "
                  f"{summary.manifest}", highlight=False)
    for name, how in summary.resumed.items():
        console.print(Text(printable(f"  {name}: {how}")))
    for name, why in summary.unwritten.items():
        console.print(Text(printable(f"  {name}: the results folder refused its rows ({why}); the next sweep "
                                     f"imports them from {results_dir / store.RECOVERY} (move them there if they "
                                     "landed elsewhere).")))
    if summary.user_errors:  # the same paragraph a driver-side HarnessError gives, once per distinct message
        messages = list(dict.fromkeys(summary.user_errors.values()))
        raise HarnessError(" ".join(messages) + f" ({', '.join(summary.user_errors)}: no rows written; the other "
                           "trials' rows are kept, and the next sweep runs only what has no result.)")
    if summary.unfinished:
        console.print(f"Interrupted: {', '.join(summary.unfinished)} wrote no rows; rerun the same command to run "
                      "only what has no result yet (a trial stopped mid-way continues from its last checkpoint).",
                      highlight=False)
        return EXIT_INTERRUPTED
    if not args.no_leaderboard:
        cmd_leaderboard(args, console)
    if summary.failed:
        console.print(f"[red]{len(summary.failed)} trials failed after {summary.retries} retries each; their heads "
                      "are recorded in the results with status 'failed' and rerun by the next sweep:[/red]")
        for name, error in summary.failed.items():
            console.print(Text(printable(f"  {name}: {error}")))
    return EXIT_FAILED_TRIALS if summary.failed or summary.unwritten else 0


_MEASURED_COLUMNS = ("backbone", "dataset", "status", "images_per_s", "train_size", "val_size", "test_size")


def _measured(results) -> tuple[dict[str, float], dict[str, int]]:
    """Backbone throughput (median images/s) and dataset image counts that earlier results recorded."""
    ok = results[results["status"] == "ok"]
    speed = ok[ok["images_per_s"] > 0].groupby("backbone")["images_per_s"].median()
    images = (ok["train_size"] + ok["val_size"] + ok["test_size"]).groupby(ok["dataset"]).max().dropna()
    return {k: float(v) for k, v in speed.items()}, {k: int(v) for k, v in images.items()}


def _print_plan(console: Console, trials, todo, results) -> None:
    """The trials, backbone passes, heads, token cache and estimated hours of a sweep, without running it."""
    from harness.report.terminal import print_table
    from harness.run.plan import trial_cost
    from harness.tokens.space import human_bytes

    speed, images = _measured(results)
    costs = [trial_cost(t, measured_speed=speed, measured_images=images) for t in trials]
    remaining = {t.trial_id: len(t.heads) for t in todo}
    rows = [[t.backbone, t.dataset, f"{t.protocol} {t.epochs}ep b{t.batch_size}", str(len(t.heads)),
             str(remaining.get(t.trial_id, 0)), _num(c.passes),
             human_bytes(c.cache_bytes) if c.cache_bytes is not None else "-" if t.protocol == "online" else "?",
             f"{c.hours:.2f}" if c.hours is not None else "?"] for t, c in zip(trials, costs)]
    print_table(console, ["backbone", "dataset", "protocol", "heads", "to run", "images through backbone",
                          "token cache", "GPU-h"], rows, ids=(0, 1), right=range(3, 8),
                title=f"Plan for grid '{trials[0].grid}'" if trials else "Plan")
    heads = sum(len(t.heads) for t in trials)
    passes = [c.passes for c in costs]
    cache = sum(c.cache_bytes or 0 for c in costs)
    console.print(f"{len(trials)} trials = {len(trials)} backbone passes over their datasets (one per backbone x "
                  f"dataset, shared by its heads; online trials pass the train split every epoch): "
                  f"{_num(sum(passes)) if None not in passes else '?'} images through a backbone; {heads} heads, "
                  f"{sum(remaining.values())} without a result yet.")
    console.print(_separate_runs(trials, costs))
    console.print(f"Token cache: {human_bytes(cache)} for the cached-protocol trials"
                  + (" (some sizes unknown)" if any(c.cache_bytes is None and t.protocol == "cached"
                                                    for t, c in zip(trials, costs)) else "") + ".")
    for t, c in zip(trials, costs):  # each tapped block is stored once, summarised where only [cls]/mean heads read it
        if c.cache_by_tap and len(c.cache_by_tap) > 1:
            console.print(Text(f"  {t.backbone} / {t.dataset} per tap: "
                               + ", ".join(f"{tap} {human_bytes(n)}" for tap, n in c.cache_by_tap.items())))
    knn = [c.knn_gflop for c in costs if c.knn_gflop]
    if knn:
        console.print(f"k-NN heads: {sum(knn):,.1f} GFLOP of similarity products in {len(knn)} trials (val and "
                      "test against train, every (k, T) from one search per layer and source), no training.")
    predictions = [c.predictions_bytes for c in costs]
    console.print(f"Test predictions: {human_bytes(sum(p or 0 for p in predictions))} added to the results folder "
                  f"(the top-1 class and correctness of every test image, per head)"
                  + (" (some test sizes unknown)" if None in predictions else "") + ".")
    hours = [c.hours for c in costs if c.hours is not None]
    unknown = sorted({t.backbone for t, c in zip(trials, costs) if c.hours is None})
    sources: dict[str, set[str]] = {}
    for t, c in zip(trials, costs):
        if c.hours is not None:
            sources.setdefault(c.throughput, set()).add(t.backbone)
    said = "; ".join(f"{source} images/s of {', '.join(sorted(names))}" for source, names in sorted(sources.items()))
    console.print(f"Backbone time: {sum(hours):.1f} GPU-hours ({said or 'no throughput known'})"
                  + (f"; unknown for {', '.join(unknown)} (no registered images_per_s and no earlier results)"
                     if unknown else "") + ". Head training is not included.")


def _separate_runs(trials, costs) -> str:
    """What the same heads would cost trained the way probing papers train them: one run (and its own backbone
    passes) per aggregator, or per head (each lr its own run)."""
    known = [(t, c) for t, c in zip(trials, costs) if c.passes is not None]
    if not known:
        return "One run per aggregator: unknown (no image counts)."
    passes = sum(c.passes for _, c in known)
    per_agg = sum(c.passes * len({h.aggregator.name for h in t.heads}) for t, c in known)
    per_head = sum(c.passes * len(t.heads) for t, c in known)
    aggs = {h.aggregator.name for t, _ in known for h in t.heads}
    hours = [(c.hours, len({h.aggregator.name for h in t.heads}), len(t.heads)) for t, c in known if c.hours is not None]
    said = (f" ({sum(h * a for h, a, _ in hours):.1f} and {sum(h * n for h, _, n in hours):.1f} GPU-hours)"
            if hours else "")
    return (f"One run per aggregator instead ({len(aggs)} aggregators, each run with its own backbone passes, as "
            f"efficient probing trains its poolings): {_num(per_agg)} images through a backbone, "
            f"{per_agg / passes:.1f}x this sweep's {_num(passes)}; one run per head: {_num(per_head)}, "
            f"{per_head / passes:.1f}x{said}.")


def _num(value: int | None) -> str:
    return f"{value:,}" if value is not None else "?"


def _in_project(path: Path, project: Path) -> str:
    """A grid file's path inside the uploaded project copy; files elsewhere do not reach the cluster."""
    try:
        return path.resolve().relative_to(project).as_posix()
    except ValueError:
        raise HarnessError(f"grid file {path} is outside the project folder {project}, which is all a job uploads; "
                           "accepted: a registered grid name or a .toml file inside the project.") from None


def cmd_submit(args: argparse.Namespace, console: Console) -> int:
    """Submit `harness sweep` as a Ray job running in a copy of this project; print how to follow it."""
    from harness.run.sweep import submit_job, wait_job

    reg = load_registry()
    grid = _sweep_grid(args, reg)  # fail here, not on the cluster, on a bad grid or name
    for flag, value in (("--results-dir", args.results_dir), ("--cache-dir", args.cache_dir),
                        ("--checkpoint-dir", args.checkpoint_dir)):
        if value and not Path(value).is_absolute():
            raise HarnessError(f"{flag} {value!r} is relative; a job runs in a temporary copy of the project, so "
                               "accepted: an absolute path on the cluster's nodes.")
    project = Path(__file__).resolve().parent.parent
    sweep = ["--grid", args.grid if args.grid in reg.grid_files else _in_project(Path(args.grid), project),
             "--no-progress"]
    for flag, value in (("--backbones", args.backbones), ("--datasets", args.datasets), ("--epochs", args.epochs),
                        ("--seeds", args.seeds), ("--lrs", args.lrs), ("--limit-train", args.limit_train),
                        ("--max-retries", args.max_retries), ("--checkpoint-minutes", args.checkpoint_minutes),
                        ("--results-dir", args.results_dir), ("--checkpoint-dir", args.checkpoint_dir),
                        ("--cache-dir", args.cache_dir), ("--cpus-per-trial", args.cpus_per_trial),
                        ("--gpus-per-trial", args.gpus_per_trial)):
        sweep += [flag, str(value)] if value is not None else []
    sweep += ["--force"] * args.force + ["--no-leaderboard"] * args.no_leaderboard + ["--download"] * args.download
    job_id, address = submit_job(sweep, address=args.address, project_dir=project)
    console.print(f"Submitted grid '{grid.name}' as Ray job {job_id} to {address}; results land on the head node "
                  f"in {args.results_dir or '$HARNESS_RESULTS_DIR, else ~/harness-results'}.")
    console.print(f"  follow its logs: ray job logs --address {address} --follow {job_id}\n"
                  f"  its status:      ray job status --address {address} {job_id}\n"
                  f"  stop it:         ray job stop --address {address} {job_id}", highlight=False)
    if not args.wait:
        return 0
    status, logs = wait_job(job_id, address)
    sys.stdout.write(logs)
    console.print(f"Job {job_id} {status}.")
    return 0 if status == "SUCCEEDED" else EXIT_FAILED_TRIALS


def cmd_weights(args: argparse.Namespace, console: Console) -> int:
    """Show the weights lock; with --refresh, accept the file now found for each named backbone."""
    from harness.models import digests
    from harness.models.weights import local_file
    from harness.report.terminal import print_table

    reg = load_registry()
    for name in args.refresh:
        entry = reg.backbone(name)
        path = local_file(entry) if not entry.random_init else None
        if path is None:
            raise HarnessError(f"--refresh {name}: no file of backbone {name!r} in the weights folder or the download "
                               "cache; accepted: a released backbone whose file is there (a sweep downloads it).")
        console.print(Text(f"{name}: recorded {path} as sha256 {digests.refresh_lock(name, path)}"))
    print_table(console, ["backbone", "file", "sha256", "recorded at"],
                [[name, str(pin.get("file")), str(pin.get("sha256")), str(pin.get("recorded_at"))]
                 for name, pin in sorted(digests.read_lock().items())], ids=(0, 1, 2),
                title=f"weights lock {setting('weights_lock')}")
    return 0


def cmd_leaderboard(args: argparse.Namespace, console: Console) -> int:
    from harness.results import store
    from harness.report.boards import build_boards
    from harness.report.leaderboard import COLUMNS, boards_json, regenerate, render_terminal

    results_dir = _results_dir(args)
    results = store.read_results(results_dir, COLUMNS)
    if results.empty:
        raise HarnessError(f"no results yet under {results_dir}; run `harness sweep --grid demo` first "
                           "(or pass --results-dir).")
    if getattr(args, "format", "table") == "json":  # `sweep` ends with this command, without --format
        _print_json(boards_json(build_boards(results)))
        return 0
    boards, paths = regenerate(results_dir, results=results)
    render_terminal(boards, console)
    console.print("Wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_claim(args: argparse.Namespace, console: Console) -> int:
    from harness.results import store
    from harness.report.claim import INPUT_COLUMNS, claim_records, claim_table
    from harness.report.claim_pages import claim_terminal

    results_dir = _results_dir(args)
    results = store.read_results(results_dir, INPUT_COLUMNS)
    if results.empty:
        raise HarnessError(f"no results yet under {results_dir}; run `harness sweep --grid claim` first.")
    table = claim_table(results, lambda hashes: store.read_correct(results_dir, hashes))
    if args.format == "json":  # one object per group, on stdout alone
        sys.stdout.write(json.dumps(claim_records(table), indent=2) + "\n")
    else:
        claim_terminal(table, console)
    return 0


QUERY_COLUMNS = ("backbone", "dataset", "aggregator", "optimizer", "lr", "wd", "seed", "status", "val_top1",
                 "test_top1", "config_hash")
_ID_COLUMNS = ("backbone", "dataset", "aggregator", "config_hash", "head_id", "trial_id", "grid")
TABLE_LIMIT = 50


def cmd_results(args: argparse.Namespace, console: Console) -> int:
    from harness.results import store

    results_dir = _results_dir(args)
    if args.results_command == "export":
        out = store.export(results_dir, args.format, Path(args.out))
        console.print(f"Wrote {out}")
        return 0
    if args.limit is not None and args.limit < 0:
        raise HarnessError(f"--limit {args.limit} is negative; accepted: 0 (every row) or a positive number of rows.")
    columns = None if args.columns == "all" else args.columns.split(",") if args.columns else list(QUERY_COLUMNS)
    frame = store.query(results_dir, args.where, columns)
    frame = frame.map(lambda v: printable(v) if isinstance(v, str) else v)  # results files can hold anything
    if frame.empty and store.read_results(results_dir, ["config_hash"]).empty:
        raise HarnessError(f"no results yet under {results_dir}; run `harness sweep --grid demo` first "
                           "(or pass --results-dir).")
    limit = (TABLE_LIMIT if args.format == "table" else 0) if args.limit is None else args.limit
    shown = frame.head(limit) if limit else frame
    if args.format == "json":
        sys.stdout.write(shown.to_json(orient="records", date_format="iso", indent=2, double_precision=15) + "\n")
    elif args.format == "csv":
        sys.stdout.write(shown.to_csv(index=False))
    elif frame.empty:
        console.print(f"no rows match {' and '.join(args.where) or 'the query'} under {results_dir}.", markup=False,
                      highlight=False)
    else:
        from harness.report.terminal import print_table

        print_table(console, list(shown.columns), [[_cell(c, v) for c, v in zip(shown.columns, row)]
                                                   for row in shown.itertuples(index=False)],
                    ids=[i for i, c in enumerate(shown.columns) if c in _ID_COLUMNS])
        if len(shown) < len(frame):
            console.print(f"the first {len(shown)} of {len(frame)} rows; --limit 0 shows all, --format csv|json "
                          "prints them for scripts.", markup=False, highlight=False)
    return 0


def _cell(column: str, value) -> str:
    """A query table cell: hashes as the pages print them, numbers short, missing values as a dash."""
    import pandas as pd

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "—"
    if column == "config_hash":
        from harness.results.store import HASH_PREFIX

        return value[:HASH_PREFIX]
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cmd_attention(args: argparse.Namespace, console: Console) -> int:
    import json

    from harness.diagnostics.attention import diagnose
    from harness.report.attention import terminal_summary

    if args.images < 1:
        raise HarnessError(f"--images {args.images}; accepted: a positive number of validation images.")
    grid = _sweep_grid(args, load_registry())
    quiet = args.format == "json"

    def done(path: Path, rows: list[dict]) -> None:
        if not quiet:
            terminal_summary(rows, console)
            console.print(Text(f"Wrote {path}"))

    rows = diagnose(grid.backbones, grid.datasets, results_dir=_results_dir(args), images=args.images,
                    seed=args.seed, weights=_parse_weights(args.weights), download=args.download, on_done=done)
    if quiet:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    return 0


def _retries(text: str) -> int:
    from harness.registry import RETRIES_MAX

    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= RETRIES_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; accepted: an integer from 0 to {RETRIES_MAX}")
    return value


def _number(*, positive: bool):
    """An argparse type: a finite float, > 0 or >= 0."""
    accepted = "a number > 0" if positive else "a number >= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"{text!r} is not accepted; accepted: {accepted}")
        return value

    return parse


def _grid_args(p: argparse.ArgumentParser) -> None:
    """What a sweep runs, shared by `sweep` and `submit`."""
    p.add_argument("--grid", required=True,
                   help="grid name in registry/grids (see `harness list grids`) or a .toml path")
    p.add_argument("--backbones", metavar="A,B", help="replace the grid's backbones (comma-separated names)")
    p.add_argument("--datasets", metavar="X,Y", help="replace the grid's datasets (comma-separated names)")
    p.add_argument("--epochs", type=int, metavar="N", help="train every head for N epochs instead of the grid's")
    p.add_argument("--seeds", metavar="S,T", help="replace the grid's seeds, e.g. 0,1,2")
    p.add_argument("--lrs", metavar="A,B", help="replace every head group's learning rates, e.g. 0.1,1")
    p.add_argument("--limit-train", type=int, metavar="N",
                   help="train on the first N training images per class (smoke tests; val and test stay whole)")
    p.add_argument("--force", action="store_true", help="rerun heads that already have results")
    p.add_argument("--max-retries", type=_retries, help="retries of a failing trial (default: the grid's max_retries)")
    p.add_argument("--checkpoint-minutes", type=_number(positive=False), metavar="M",
                   help="a running trial saves its heads' state at each epoch's end and at least every M minutes, and "
                        "a retried or rerun trial continues from it (default: the grid's checkpoint_minutes, 10)")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="where running trials keep their checkpoints, as every node sees it: on a multi-node cluster "
                        "a folder all nodes share (NFS); default: the results folder's checkpoints/")
    p.add_argument("--no-leaderboard", action="store_true", help="do not regenerate the leaderboard at the end")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="token cache folder of the cached protocol, as the trials' nodes see it "
                        "(default: HARNESS_CACHE_DIR or [paths] cache_dir there)")
    p.add_argument("--download", action="store_true", help="let the trials download missing torchvision datasets")
    p.add_argument("--cpus-per-trial", type=_number(positive=True), metavar="N",
                   help="CPUs each trial asks Ray for (default: the grid's)")
    p.add_argument("--gpus-per-trial", type=_number(positive=False), metavar="N",
                   help="GPUs each trial asks Ray for, possibly fractional (default: the grid's)")


class _Help(argparse.HelpFormatter):
    """Prose wrapped to the terminal; indented lines (examples) kept as written, so they paste as shown."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        prose: list[str] = []
        for line in [*text.splitlines(), ""]:
            if line.strip() and not line.startswith(" "):
                prose.append(line.strip())
                continue
            if prose:
                out += textwrap.wrap(" ".join(prose), width, initial_indent=indent, subsequent_indent=indent)
                prose = []
            out.append(indent + line if line.strip() else "")
        return "\n".join(out).rstrip("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", formatter_class=_Help,
        description="Benchmark frozen self-supervised ViTs by how well their tokens can be read out.",
        epilog=textwrap.dedent("""\
            examples:
              harness list backbones
              harness show mae-vit-b16             # one entry: weights, licence, paper
              harness sweep --grid demo            # offline pipeline check, under a minute
              harness sweep --grid full --dry-run  # what the full benchmark would run
              harness leaderboard                  # results/leaderboard.{md,html}
              harness claim                        # mean pooling vs [cls], lrs tuned
            """))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description, epilog=epilog, formatter_class=_Help)
        return p

    def results_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--results-dir", metavar="DIR",
                       help="results folder (default: HARNESS_RESULTS_DIR, [paths] results_dir, or ./results)")

    def format_arg(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--format", choices=["table", "json"], default="table",
                       help=f"table (default) or json: {what} (schema in the README)")

    p = add("list", "list registry entries",
            "List the backbones, aggregators, datasets, training recipes and grids in the registry.",
            "examples:\n  harness list backbones\n  harness list grids --format json")
    p.add_argument("kind", nargs="?", choices=["backbones", "aggregators", "datasets", "recipes", "grids"])
    format_arg(p, "an object of kind -> list of entries")
    p.set_defaults(func=cmd_list)

    p = add("show", "everything the registry says about one entry",
            "Show one backbone, aggregator, dataset, recipe or grid: for a backbone its family, architecture, input "
            "transform, prefix tokens, weight file, URL, checksum status, licence, paper, origin and published "
            "numbers.", "examples:\n  harness show ijepa-vit-h14-in1k\n  harness show demo --format json")
    p.add_argument("name", help="a name that `harness list` prints")
    format_arg(p, "the entry's fields and its kind")
    p.set_defaults(func=cmd_show)

    p = add("sweep", "run a grid on Ray Tune", textwrap.dedent("""\
        Run every trial of a grid (one per backbone x dataset, each training all of the grid's heads from one
        backbone pass) on a local Ray instance or a cluster. Heads that already have a final result are skipped,
        so rerunning after a crash resumes. Rows land in the results folder as each trial finishes; the
        leaderboard is regenerated at the end. Exit status 1 if any trial failed after its retries."""),
            "examples:\n  harness sweep --grid demo\n  harness sweep --grid full --dry-run\n"
            "  harness sweep --grid demo --epochs 2 --seeds 0 --lrs 0.3,1\n"
            "  harness sweep --grid claim --datasets digits \\\n"
            "      --backbones demo-mae-tiny,demo-dino-tiny\n"
            "  harness sweep --grid full --address ray://head:10001")
    _grid_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (trials, heads, passes) and exit")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="use this checkpoint file for backbone NAME (repeatable)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--num-gpus", type=float, help="GPUs of the local Ray instance (default: detected)")
    p.add_argument("--no-progress", action="store_true", help="no live trial table")
    results_dir_arg(p)
    p.set_defaults(func=cmd_sweep)

    p = add("submit", "run a grid as a Ray job on a cluster", textwrap.dedent("""\
        Submit `harness sweep` as a Ray job: this project folder is uploaded as the job's working directory and the
        sweep's driver runs on the cluster's head node, so it survives this terminal closing. Results are written
        on the head node. Authenticates with the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token)."""),
            "examples:\n"
            "  ray dashboard cluster.yaml   # forwards the job API to port 8265\n"
            "  harness submit --grid full --address http://127.0.0.1:8265\n"
            "  harness submit --grid demo --backbones demo-mae-tiny --wait")
    _grid_args(p)
    p.add_argument("--address", help="the cluster's job API (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, else "
                                     "http://127.0.0.1:8265)")
    p.add_argument("--wait", action="store_true", help="wait for the job, print its logs, exit 1 unless it succeeded")
    p.add_argument("--results-dir", metavar="DIR",
                   help="absolute results folder on the head node (default: HARNESS_RESULTS_DIR there, else "
                        "~/harness-results)")
    p.set_defaults(func=cmd_submit)

    p = add("weights", "show or refresh the weights lock", textwrap.dedent("""\
        Show the weights lock: the sha256 each released checkpoint without a published hash had at its first use,
        which every later load must match. --refresh NAME records the file found now instead (after you replaced
        it on purpose)."""), "example: harness weights --refresh mae-vit-b16")
    p.add_argument("--refresh", action="append", default=[], metavar="NAME", help="accept the current file of NAME")
    p.set_defaults(func=cmd_weights)

    p = add("leaderboard", "regenerate leaderboards from the results",
            "Regenerate results/leaderboard.md and results/leaderboard.html from the Parquet results alone and "
            "print the tables in the terminal. Deterministic: the same results give the same files.")
    results_dir_arg(p)
    format_arg(p, "a list of boards, each with its rows and cells; no files written")
    p.set_defaults(func=cmd_leaderboard)

    p = add("claim", "test mean pooling vs [cls]",
            "For each backbone x dataset x protocol: is mean pooling equivalent to [cls] once each has its own "
            "validation-selected learning rate (paired by seed, TOST at the grid's margin)? Also shows the "
            "comparison at the [cls] learning rate.")
    results_dir_arg(p)
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="table (default) or json: one object per group with its interval, p-values and verdicts")
    p.set_defaults(func=cmd_claim)

    p = add("attention", "measure where each block's tokens attend", textwrap.dedent("""\
        The attention analysis of "Beyond [cls]" as a diagnostic: one frozen pass per backbone x dataset over
        seeded validation images, with every block's attention computed explicitly and reduced per block and
        head ([cls] to itself and to the patches, patches to themselves, to each other, to the prefix tokens,
        mean attention distance). Rows go to <results>/attention/; the leaderboard pages show them."""),
            "examples:\n  harness attention --grid demo\n"
            "  harness attention --grid claim --backbones mae-vit-b16 --datasets cifar100 --images 2000\n"
            "  harness attention --grid demo --format json")
    p.add_argument("--grid", required=True,
                   help="grid whose backbones and datasets to measure (see `harness list grids`) or a .toml path")
    p.add_argument("--backbones", metavar="A,B", help="replace the grid's backbones (comma-separated names)")
    p.add_argument("--datasets", metavar="X,Y", help="replace the grid's datasets (comma-separated names)")
    p.add_argument("--images", type=int, default=1000, metavar="N",
                   help="validation images per backbone and dataset (default 1000; all if fewer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image sample (default 0)")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="use this checkpoint file for backbone NAME (repeatable)")
    p.add_argument("--download", action="store_true", help="download missing torchvision datasets")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="table (default): a summary per backbone; json: every row on stdout")
    results_dir_arg(p)
    p.set_defaults(func=cmd_attention)

    p = add("results", "export or query raw results", "Export or query the raw result rows.",
            "examples:\n  harness results export --format csv --out results.csv\n"
            "  harness results query --where aggregator=mean --where 'lr>=0.01' \\\n"
            "      --columns backbone,lr,test_top1")
    rsub = p.add_subparsers(dest="results_command", required=True, metavar="ACTION")
    e = rsub.add_parser("export", help="write all rows to one CSV or Parquet file",
                        description="Write all result rows (latest per head) to one CSV or Parquet file.")
    e.add_argument("--format", choices=["csv", "parquet"], required=True)
    e.add_argument("--out", required=True, help="output file")
    results_dir_arg(e)
    q = rsub.add_parser("query", help="filter rows by column", formatter_class=_Help,
                        description="Print the result rows matching every --where filter (column OP value, "
                                    "OP one of = != < <= > >=; quote filters with < or > for the shell; "
                                    "config_hash= matches the hash prefixes the leaderboard prints).",
                        epilog="examples:\n  harness results query --where aggregator=mean --where 'lr<=0.01'\n"
                               "  harness results query --where config_hash=88a671f2e317 --columns all\n"
                               "  harness results query --format json --where status=diverged")
    q.add_argument("--where", action="append", default=[], metavar="FILTER",
                   help="e.g. aggregator=mean or 'lr<0.1' (repeatable, ANDed)")
    q.add_argument("--columns", metavar="A,B", help=f"columns to show, or all (default: {', '.join(QUERY_COLUMNS)})")
    q.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table (default), json (a list of row objects) or csv")
    q.add_argument("--limit", type=int, metavar="N",
                   help=f"print the first N rows; 0: all (default {TABLE_LIMIT} for a table, all for json/csv)")
    results_dir_arg(q)
    p.set_defaults(func=cmd_results)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    try:
        return args.func(args, console)
    except HarnessError as e:
        Console(stderr=True, soft_wrap=True).print(Text.assemble(("error: ", "bold red"), printable(str(e))))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted; results of finished trials are kept, rerun to resume.")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""The sweep runner: trials on Ray Tune, results into the store as each trial finishes.

The only module that imports Ray. Each trial asks Ray for the CPUs and GPUs its grid names, so Ray
places trials across GPUs and nodes; a trial sends its rows back through `tune.report`, and a driver-side
callback writes them to the results store at once (atomically, one file per trial), so a driver killed
mid-sweep loses no finished trial and a rerun skips every head that has a final result. Ray Tune's
`fit()` does not raise for failed trials: the result grid is checked, failures are recorded as rows, and
the sweep reports them. `submit_job` runs the same sweep as a Ray job, its driver on the cluster's head node.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import ray
from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harness.results import store
from harness.errors import HarnessError
from harness.report.plain import printable
from harness.run.plan import TrialPlan

_TIMESTAMPS = ("started_at", "ended_at")


def _trainable(config: dict, plans: list[dict]) -> None:
    """Ray Tune entry point: run one trial on the device Ray assigned and report its rows."""
    import torch

    from harness.run.trial import run_trial

    plan = TrialPlan.from_dict(plans[config["index"]])
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    gpu_ids = ray.get_gpu_ids()
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    rows, curves, predictions = run_trial(plan, device=device)
    node = ray.get_runtime_context().get_node_id()
    for row in rows:
        row["device"] += f" [ray node {node[:8]}, gpus {','.join(map(str, gpu_ids)) or 'none'}]"
    tune.report({"payload": json.dumps({"rows": rows, "curves": curves, "predictions": predictions}, default=_iso)})


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _decode_predictions(records: list[dict]) -> list[dict]:
    for record in records:
        for key in ("predicted", "correct"):
            record[key] = base64.b64decode(record[key])
    return records


def _decode(rows: list[dict]) -> list[dict]:
    for row in rows:
        for key in _TIMESTAMPS:
            row[key] = datetime.fromisoformat(row[key])
    return rows


@dataclass
class SweepSummary:
    trials: int
    heads: int
    retries: int = 0  # retries each failing trial was given
    failed: dict[str, str] = field(default_factory=dict)  # "backbone/dataset" -> error
    unfinished: list[str] = field(default_factory=list)  # "backbone/dataset" of trials stopped before their end
    wall_s: float = 0.0


class _StoreAndShow(tune.Callback):
    """Writes each finished trial's rows to the store and shows the trials: a live table on a terminal, one
    line per state change otherwise (CI logs), nothing without a console."""

    def __init__(self, plans: list[TrialPlan], results_dir: Path, console: Console | None):
        self.plans, self.results_dir, self.console = plans, results_dir, console
        self.live = Live(console=console, refresh_per_second=2) if console is not None and console.is_terminal else None
        self.state = {i: "pending" for i in range(len(plans))}
        self.started = time.monotonic()

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment state; the display stays with the driver."""
        return {**self.__dict__, "live": None, "console": None}

    def _set(self, trial, state: str) -> None:
        index = trial.config["index"]
        self.state[index] = state
        if self.live is not None:
            self.live.update(self.table())
        elif self.console is not None:
            plan = self.plans[index]
            self.console.print(Text(f"[{time.monotonic() - self.started:6.0f} s] {printable(plan.backbone)}/"
                                    f"{printable(plan.dataset)}: {state} ({self._title()})"), soft_wrap=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._set(trial, "running")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._set(trial, "retrying")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        payload = json.loads(result["payload"])
        store.write_trial(self.results_dir, _decode(payload["rows"]), payload["curves"],
                          _decode_predictions(payload["predictions"]))
        self._set(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set(trial, "failed")

    def __enter__(self) -> _StoreAndShow:
        if self.live is not None:
            self.live.start()
            self.live.update(self.table())
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def _title(self) -> str:
        counts = {s: sum(1 for v in self.state.values() if v == s) for s in ("running", "done", "failed")}
        finished = counts["done"] + counts["failed"]
        elapsed = time.monotonic() - self.started
        eta = f"{elapsed / finished * (len(self.plans) - finished):.0f} s" if finished else "?"
        return (f"{len(self.plans)} trials: {counts['running']} running, {counts['done']} done, {counts['failed']} "
                f"failed; elapsed {elapsed:.0f} s, ETA {eta}")

    def table(self) -> Table:
        table = Table(title=self._title())
        for col in ("backbone", "dataset", "heads", "state"):
            table.add_column(col)
        style = {"done": "green", "failed": "red", "running": "yellow", "retrying": "magenta"}
        for i, plan in enumerate(self.plans):
            state = self.state[i]
            table.add_row(Text(printable(plan.backbone)), Text(printable(plan.dataset)), str(len(plan.heads)),
                          Text(state, style=style.get(state, "")))
        return table


def git_commit() -> str:
    """The project's commit, read once by the driver (workers may have no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except OSError:
        return ""


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: float | None = None) -> None:
    """Join the Ray cluster at `address` (or RAY_ADDRESS), else start a local Ray instance for this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=200 * 1024**2, **quiet)


def check_resources(cpus_per_trial: float, gpus_per_trial: float, *, local: bool,
                    console: Console | None) -> None:
    """A trial no node can hold would wait forever: on a local instance that is an error, on a cluster a warning
    (an autoscaler may still add such a node)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus_per_trial and n.get("GPU", 0) >= gpus_per_trial for n in nodes):
        return
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no live node"
    message = (f"each trial asks for {cpus_per_trial:g} CPUs and {gpus_per_trial:g} GPUs, and no node of this Ray "
               f"{'instance' if local else 'cluster'} has that ({have})")
    if local:
        raise HarnessError(f"{message}; accepted: --cpus-per-trial/--gpus-per-trial within one node's resources, "
                           "--num-cpus/--num-gpus for the local instance, or --address of a cluster with such nodes.")
    if console is not None:
        console.print(f"warning: {message}; trials wait until the autoscaler adds one.", highlight=False)


def run_sweep(plans: list[TrialPlan], *, results_dir: Path, cpus_per_trial: float, gpus_per_trial: float,
              max_retries: int, address: str | None = None, num_cpus: int | None = None,
              num_gpus: float | None = None, console: Console | None = None) -> SweepSummary:
    """Run the trials on Ray Tune and write every finished trial's rows; failed trials become "failed" rows."""
    from harness.run.trial import failed_rows

    results_dir = results_dir.resolve()
    summary = SweepSummary(trials=len(plans), heads=sum(len(p.heads) for p in plans))
    if not plans:
        return summary
    summary.retries = max_retries
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    connect(address, num_cpus=num_cpus, num_gpus=num_gpus)
    check_resources(cpus_per_trial, gpus_per_trial, local=not (address or os.environ.get("RAY_ADDRESS")),
                    console=console)
    trainable = tune.with_resources(tune.with_parameters(_trainable, plans=[p.to_dict() for p in plans]),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    with tempfile.TemporaryDirectory(prefix="harness-tune-") as storage, \
            _StoreAndShow(plans, results_dir, console) as callback:
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(plans))))},
            tune_config=tune.TuneConfig(reuse_actors=True),  # a worker imports torch and timm once, not per trial
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=0, callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=max_retries),
                                      checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False)),
        )
        with _without_tune_loggers():
            grid = tuner.fit()
    for result in grid:
        plan = plans[result.config["index"]]
        if result.error is not None:
            message = _last_line(str(result.error))
            store.write_trial(results_dir, failed_rows(plan, message, started), [])
            summary.failed[f"{plan.backbone}/{plan.dataset}"] = message
        elif callback.state[result.config["index"]] != "done":  # stopped (Ctrl-C) before it reported its rows
            summary.unfinished.append(f"{plan.backbone}/{plan.dataset}")
    summary.wall_s = time.monotonic() - t0
    return summary


@contextmanager
def _without_tune_loggers() -> Iterator[None]:
    """Tune adds CSV, JSON and TensorBoard loggers that copy every payload to disk, where nothing reads it (the
    store keeps the rows); the TensorBoard one imports tensorboardX, ~2 s of driver CPU while the first trial
    starts. Off for this fit only, unless TUNE_DISABLE_AUTO_CALLBACK_LOGGERS says otherwise."""
    key = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "1"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _last_line(text: str) -> str:
    """The exception line of a Ray error's traceback text."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


# ------------------------------------------------------------------------------------------------ jobs

DEFAULT_JOB_ADDRESS = "http://127.0.0.1:8265"
JOB_RESULTS_DIR = "~/harness-results"  # on the head node, when neither --results-dir nor its HARNESS_RESULTS_DIR says
_UPLOAD_EXCLUDES = [".git", "results", "bench/out", "**/__pycache__", "*.egg-info", ".venv", ".pytest_cache"]


def _job_client(address: str | None):
    """A job client that sends the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token) whenever one is here."""
    from ray._private.authentication import authentication_token_setup as token_setup
    from ray.job_submission import JobSubmissionClient

    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)  # upload chatter; "token auth is enabled" is the point
    token_setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or \
        DEFAULT_JOB_ADDRESS
    try:
        return JobSubmissionClient(address), address
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise HarnessError(f"cannot reach a Ray job server at {address} ({_last_line(str(e))}); accepted: the "
                           "head node's dashboard address, e.g. http://127.0.0.1:8265 after `ray dashboard "
                           "cluster.yaml`, with the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token.") from None


AGENT_WAIT_S = 30.0  # how long a submission waits for a freshly started head's job agent


def submit_job(sweep_args: list[str], *, address: str | None, project_dir: Path) -> tuple[str, str]:
    """Submit `harness sweep <sweep_args>` as a Ray job whose working directory is a copy of `project_dir`."""
    client, address = _job_client(address)
    entrypoint = shlex.join(["python", "-m", "harness.cli", "sweep", *sweep_args])
    env = {"RAY_AIR_NEW_OUTPUT": "0"}
    if "--results-dir" not in sweep_args and not os.environ.get("HARNESS_RESULTS_DIR"):
        env["HARNESS_RESULTS_DIR"] = JOB_RESULTS_DIR  # a relative default would land in the job's temporary copy
    if os.environ.get("HARNESS_USER_REGISTRY"):
        env["HARNESS_USER_REGISTRY"] = os.environ["HARNESS_USER_REGISTRY"]  # its folders must exist on the nodes
    runtime_env = {"working_dir": str(project_dir), "excludes": _UPLOAD_EXCLUDES, "env_vars": env}
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env), address
        except RuntimeError as e:  # a head that just started may not have its job agent up yet
            if "No available agent" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise HarnessError(f"the Ray job server at {address} has no job agent ready after {AGENT_WAIT_S:g} s "
                                   f"({_last_line(str(e))}); accepted: a head node whose dashboard agent is up "
                                   "(`ray status` on the head lists it), then submit again.") from None
            time.sleep(1.0)


def wait_job(job_id: str, address: str, poll_s: float = 2.0) -> tuple[str, str]:
    """Block until the job ends; its final status and its logs."""
    from ray.job_submission import JobStatus

    client, _ = _job_client(address)
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(poll_s)
    return status.value, client.get_job_logs(job_id)

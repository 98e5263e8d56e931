"""The sweep runner: trials on Ray Tune, results into the store as each trial finishes.

The only module that imports Ray. Each trial asks Ray for the CPUs and GPUs its grid names, so Ray
places trials across GPUs and nodes; a trial sends its rows back through `tune.report`, and a driver-side
callback writes them to the results store at once (atomically, one file per trial), so a driver killed
mid-sweep loses no finished trial and a rerun skips every head that has a final result. Ray Tune's
`fit()` does not raise for failed trials: the result grid is checked, failures are recorded as rows, and
the sweep reports them. A `HarnessError` in a trial (a missing file, a bad option) is the user's input, not a crash:
the worker reports its message instead of raising, so Tune never retries it, and the CLI shows that one paragraph.
`submit_job` runs the same sweep as a Ray job, its driver on the cluster's head node.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import ray
from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harness.results import store
from harness.errors import HarnessError, TransientError
from harness.report.plain import printable
from harness.run import checkpoints
from harness.run.manifest import write_manifest
from harness.run.plan import TrialPlan



def _trainable(config: dict, plans: list[TrialPlan], resume_from: dict[int, str], every_s: float) -> None:
    """Ray Tune entry point: run one trial on the device Ray assigned and report its rows. Its checkpoints go to
    Tune, which gives the latest back when the trial is retried; `resume_from` names an earlier sweep's."""
    import torch

    from harness.run.trial import run_trial

    plan = plans[config["index"]]
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    gpu_ids = ray.get_gpu_ids()
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    def on_epoch(epoch: int, epochs: int, alive: int, best: float | None) -> None:
        tune.report({"progress": json.dumps([epoch, epochs, alive, best])})

    key = checkpoints.checkpoint_key(plan)
    save = _TuneCheckpoints(key, tune.report)
    resume = _resume_state(key, resume_from.get(config["index"]))
    try:
        try:
            rows, curves, predictions = run_trial(plan, device=device, on_epoch=on_epoch, checkpointing=
                                                  checkpoints.Checkpointing(save, every_s=every_s, resume=resume))
        except checkpoints.CheckpointRefused as e:  # a state that does not fit this trial's heads
            _report_refused(e)
            rows, curves, predictions = run_trial(plan, device=device, on_epoch=on_epoch,
                                                  checkpointing=checkpoints.Checkpointing(save, every_s=every_s))
    except TransientError:
        raise  # a download cut off: Tune retries it
    except HarnessError as e:  # the user's input, not a crash: reported once, never retried
        tune.report({"user_error": str(e)})
        return
    node = ray.get_runtime_context().get_node_id()
    for row in rows:
        row["device"] += f" [ray node {node[:8]}, gpus {','.join(map(str, gpu_ids)) or 'none'}]"
    tune.report({"payload": store.payload(rows, curves, predictions)})


class _TuneCheckpoints:
    """A trial's `save`: each state written to a temporary folder and reported to Ray Tune, which copies it into
    the sweep's checkpoint storage. A checkpoint that cannot be stored (a full disk; on a multi-node cluster, a
    storage folder the trial's node does not share: Tune's RuntimeError) costs the trial its resumability, never its
    result: checkpoints stop for that trial, with one note saying why and what to set."""

    def __init__(self, key: str, report):
        self.key, self.report, self.off = key, report, False

    def __call__(self, state: checkpoints.TrialState) -> None:
        if self.off:
            return
        try:
            with tempfile.TemporaryDirectory(prefix="harness-checkpoint-") as folder:
                checkpoints.write_state(Path(folder), self.key, state)
                self.report({"checkpoint": json.dumps(asdict(state.position))},
                            checkpoint=tune.Checkpoint.from_directory(folder))
        except (OSError, RuntimeError) as e:
            self.off = True
            why = (e.strerror or str(e)) if isinstance(e, OSError) else (str(e).splitlines() or [repr(e)])[0]
            self.report({"note": f"checkpoints are off for this trial, which trains on without them: {why} "
                                 "(accepted: a --checkpoint-dir every node can write, e.g. a shared NFS folder)"})


def _report_refused(e: checkpoints.CheckpointRefused) -> None:
    tune.report({"note": f"not continued from its checkpoint: {e}; trained from the start"})


def _resume_state(key: str, earlier: str | None) -> checkpoints.TrialState | None:
    """The state a trial continues from: its own last checkpoint when Tune retries it, else an earlier sweep's
    (`earlier`); None to start afresh. A refused checkpoint is reported and not used."""
    latest = tune.get_checkpoint()
    try:
        if latest is not None:
            with latest.as_directory() as folder:
                state, whose = checkpoints.read_state(Path(folder), key), "after a failure"
        elif earlier is not None:
            state, whose = checkpoints.read_state(Path(earlier), key), "an earlier sweep's"
        else:
            return None
    except checkpoints.CheckpointRefused as e:
        _report_refused(e)
        return None
    tune.report({"note": f"continued from its checkpoint ({whose}) at epoch {state.position.epoch}, step "
                         f"{state.position.step}"})
    return state


@dataclass
class SweepSummary:
    trials: int
    heads: int
    retries: int = 0  # retries each failing trial was given
    failed: dict[str, str] = field(default_factory=dict)  # "backbone/dataset" -> error
    unfinished: list[str] = field(default_factory=list)  # "backbone/dataset" of trials stopped before their end
    user_errors: dict[str, str] = field(default_factory=dict)  # "backbone/dataset" -> HarnessError message, no rows
    unwritten: dict[str, str] = field(default_factory=dict)  # "backbone/dataset" -> why the store refused, where kept
    resumed: dict[str, str] = field(default_factory=dict)  # "backbone/dataset" -> its checkpoint notes, in order
    wall_s: float = 0.0
    manifest: str = ""  # the sweep's manifest file, when the caller described the sweep


class _StoreAndShow(tune.Callback):
    """Writes each finished trial's rows to the store and shows the trials: a live table on a terminal (its clock
    ticking between events), one line per event otherwise (CI logs), nothing without a console. A running trial
    reports each epoch: epochs done, heads still alive and the best validation top-1 so far."""

    def __init__(self, plans: list[TrialPlan], results_dir: Path, console: Console | None):
        self.plans, self.results_dir, self.console = plans, results_dir, console
        self.state = {i: "pending" for i in range(len(plans))}
        self.user_errors: dict[int, str] = {}  # trial index -> HarnessError message from its worker
        self.unwritten: dict[int, tuple[str, str]] = {}  # trial index -> (payload, why the store refused it)
        self.notes: dict[int, list[str]] = {}  # trial index -> what its checkpoints did (continued, refused, ...)
        self.progress: dict[int, tuple[int, int, int, float | None]] = {}
        self.started = time.monotonic()
        self.first_start: float | None = None
        self.live = Live(console=console, refresh_per_second=2, get_renderable=self.table) \
            if console is not None and console.is_terminal else None

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment state; the display stays with the driver."""
        return {**self.__dict__, "live": None, "console": None}

    def _log(self, index: int, event: str) -> None:
        if self.live is None and self.console is not None:
            plan = self.plans[index]
            self.console.print(Text(f"[{time.monotonic() - self.started:6.0f} s] {printable(plan.backbone)}/"
                                    f"{printable(plan.dataset)}: {event} ({self._title()})"), soft_wrap=True)

    def _set(self, trial, state: str) -> None:
        index = trial.config["index"]
        self.state[index] = state
        if state == "running" and self.first_start is None:
            self.first_start = time.monotonic()
        self._log(index, state)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._set(trial, "running")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.progress.pop(trial.config["index"], None)
        self._set(trial, "retrying")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "progress" in result:  # an epoch ended inside the trial
            index = trial.config["index"]
            epoch, epochs, alive, best = json.loads(result["progress"])
            before = self.progress.get(index, (0, 0, 0, None))[3]
            if before is not None and epoch > 1:  # the best so far in this trial, not only this epoch's
                best = before if best is None else max(best, before)
            self.progress[index] = (epoch, epochs, alive, best)
            self._log(index, f"epoch {_epoch_text(self.progress[index])}")
            return
        if "checkpoint" in result:  # a checkpoint Tune now holds
            return
        if "note" in result:
            self.notes.setdefault(trial.config["index"], []).append(result["note"])
            self._log(trial.config["index"], result["note"])
            return
        if "user_error" in result:
            self.user_errors[trial.config["index"]] = result["user_error"]
            self._set(trial, "failed")
            return
        try:
            store.write_trial(self.results_dir, *store.from_payload(result["payload"]))
        except OSError as e:  # disk full, folder gone: keep the rows for the next run, let the other trials go on
            self.unwritten[trial.config["index"]] = (result["payload"], f"{e.strerror or e}")
        self._set(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set(trial, "failed")

    def __enter__(self) -> _StoreAndShow:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def _fraction(self) -> float:
        """Share of the sweep's epochs done: finished trials whole, running ones by their epochs."""
        done = 0.0
        for i, state in self.state.items():
            if state in ("done", "failed"):
                done += 1.0
            elif state == "running" and i in self.progress:
                epoch, epochs = self.progress[i][:2]
                done += epoch / max(epochs, 1)
        return done / max(len(self.plans), 1)

    def _title(self) -> str:
        counts = {s: sum(1 for v in self.state.values() if v == s) for s in ("running", "done", "failed")}
        elapsed = time.monotonic() - self.started
        fraction = self._fraction()
        if self.first_start is not None and 0 < fraction < 1:
            # from the trials' own pace since the first one started: no jump when a trial's rows arrive
            eta = f"{(time.monotonic() - self.first_start) * (1 - fraction) / fraction:.0f} s"
        else:
            eta = "0 s" if fraction >= 1 else "?"
        return (f"{counts['done']}/{len(self.plans)} trials done, {counts['running']} running, "
                f"{counts['failed']} failed; {elapsed:.0f} s, ETA {eta}")

    def table(self) -> Table:
        table = Table(title=Text(self._title()), title_justify="left")
        for col in ("backbone", "dataset", "state", "epoch", "heads alive", "best val top-1"):
            names = [printable(getattr(p, col)) for p in self.plans] if col in ("backbone", "dataset") else []
            table.add_column(col, min_width=max(map(len, names)) if names else None, overflow="fold")  # names whole
        style = {"done": "green", "failed": "red", "running": "yellow", "retrying": "magenta"}
        for i, plan in enumerate(self.plans):
            progress = self.progress.get(i) if self.state[i] in ("running", "done") else None
            table.add_row(Text(printable(plan.backbone)), Text(printable(plan.dataset)),
                          Text(self.state[i], style=style.get(self.state[i], "")),
                          Text(f"{progress[0]}/{progress[1]}" if progress else "—"),
                          Text(f"{progress[2]}/{len(plan.heads)}" if progress else str(len(plan.heads))),
                          Text(f"{progress[3]:.2f}" if progress and progress[3] is not None else "—"))
        return table


def _epoch_text(progress: tuple) -> str:
    epoch, epochs, alive, best = progress
    return f"{epoch}/{epochs}, {alive} heads alive, best val top-1 {best:.2f}" if best is not None else \
        f"{epoch}/{epochs}, {alive} heads alive"


COMMIT_ENV = "HARNESS_GIT_COMMIT"  # set by `harness submit`: a job's uploaded copy has no .git


def git_commit() -> str:
    """The project's commit, "-dirty" appended when tracked files differ from it (as `git describe --dirty`);
    read once by the driver (workers may have no git). HARNESS_GIT_COMMIT, when set, is the submitting
    checkout's, and wins."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=here)
        if head.returncode != 0:
            return ""
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=30, cwd=here)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: float | None = None) -> None:
    """Join the Ray cluster at `address` (or RAY_ADDRESS), else start a local Ray instance for this process, every
    one of its servers listening on 127.0.0.1 only."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    if address:
        ray.init(address=address, **quiet)
    else:
        with _single_node():
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     object_store_memory=200 * 1024**2, **quiet)


@contextmanager
def _single_node() -> Iterator[None]:
    """Ray's servers (GCS, raylet, workers, agents, metrics) bind 127.0.0.1 only when the node's address is
    127.0.0.1, and all interfaces otherwise; on Linux `ray.init` turns a loopback `_node_ip_address` into the
    machine's address unless clusters are off, as on macOS and Windows (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which
    Ray reads once, on import, into this constant). Off while this process starts an instance no node joins."""
    from ray._private import ray_constants

    clusters = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters


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
              max_retries: int, checkpoint_minutes: float = 10.0, checkpoint_dir: Path | None = None,
              address: str | None = None,
              num_cpus: int | None = None, num_gpus: float | None = None, console: Console | None = None,
              manifest: dict | None = None) -> SweepSummary:
    """Run the trials on Ray Tune and write every finished trial's rows; failed trials become "failed" rows.
    A running trial checkpoints its heads (every epoch, and every `checkpoint_minutes` within long epochs) into
    `checkpoint_dir` (default: the results folder's `checkpoints/`), Tune's storage, which on a multi-node cluster
    must be a folder every node shares: a retried trial, or the same trial in a later sweep, continues from its
    latest; a trial's checkpoints are deleted once its rows are stored.
    `manifest` (`describe_sweep`) is completed with the Ray nodes and the outcome and written beside the rows."""
    from harness.run.trial import failed_rows

    results_dir = results_dir.resolve()
    summary = SweepSummary(trials=len(plans), heads=sum(len(p.heads) for p in plans))
    if not plans:
        return summary
    summary.retries = max_retries
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    target = address or os.environ.get("RAY_ADDRESS")
    if console is not None and not ray.is_initialized():
        console.print(f"Connecting to the Ray cluster at {target}..." if target else
                      "Starting a local Ray instance (takes a few seconds)...", highlight=False, markup=False)
    connect(address, num_cpus=num_cpus, num_gpus=num_gpus)
    if console is not None:
        have = ray.cluster_resources()
        console.print(f"Ray ready after {time.monotonic() - t0:.1f} s: {have.get('CPU', 0):g} CPUs, "
                      f"{have.get('GPU', 0):g} GPUs; {len(plans)} trials, each asking for {cpus_per_trial:g} CPUs and "
                      f"{gpus_per_trial:g} GPUs.", highlight=False, markup=False)
    check_resources(cpus_per_trial, gpus_per_trial, local=not (address or os.environ.get("RAY_ADDRESS")),
                    console=console)
    storage = checkpoint_dir.resolve() if checkpoint_dir else results_dir / checkpoints.FOLDER
    keys = [checkpoints.checkpoint_key(plan) for plan in plans]
    earlier = {i: str(found) for i, key in enumerate(keys) if (found := checkpoints.latest(storage, key))}
    trainable = tune.with_resources(tune.with_parameters(_trainable, plans=plans, resume_from=earlier,
                                                         every_s=checkpoint_minutes * 60),
                                    {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    name = f"sweep-{started:%Y%m%d-%H%M%S}-{os.getpid()}"  # this sweep's folder in the checkpoint storage
    with _StoreAndShow(plans, results_dir, console) as callback:
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(plans))))},
            tune_config=tune.TuneConfig(reuse_actors=True),  # a worker imports torch and timm once, not per trial
            run_config=tune.RunConfig(name=name, storage_path=str(storage),
                                      verbose=0, callbacks=[callback],
                                      failure_config=tune.FailureConfig(max_failures=max_retries),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
        with _without_tune_loggers():
            grid = tuner.fit()
    for result in grid:
        plan = plans[result.config["index"]]
        if result.error is not None:
            message = _last_line(str(result.error))
            store.write_trial(results_dir, failed_rows(plan, message, started), [])
            summary.failed[f"{plan.backbone}/{plan.dataset}"] = message
        elif result.config["index"] in callback.user_errors:
            summary.user_errors[f"{plan.backbone}/{plan.dataset}"] = callback.user_errors[result.config["index"]]
        elif callback.state[result.config["index"]] != "done":  # stopped (Ctrl-C) before it reported its rows
            summary.unfinished.append(f"{plan.backbone}/{plan.dataset}")
    for index, (text, why) in callback.unwritten.items():
        plan = plans[index]
        kept = store.keep_for_recovery(results_dir, text)
        summary.unwritten[f"{plan.backbone}/{plan.dataset}"] = f"{why}; its rows are kept in {kept}"
    for index, notes in callback.notes.items():
        summary.resumed[f"{plans[index].backbone}/{plans[index].dataset}"] = "; ".join(notes)
    checkpoints.discard(storage, {keys[i] for i, state in callback.state.items()
                                  if state == "done" and i not in callback.unwritten}, own=name)
    summary.wall_s = time.monotonic() - t0
    if manifest is not None:
        summary.manifest = str(write_manifest(
            results_dir, manifest, started=started, ended=datetime.now(timezone.utc), nodes=_nodes(),
            summary={"trials": summary.trials, "heads": summary.heads, "failed": summary.failed,
                     "unfinished": summary.unfinished, "checkpoints": summary.resumed,
                     "wall_s": round(summary.wall_s, 3)}))
    return summary


def _nodes() -> list[dict]:
    """The live Ray nodes: host, CPUs, GPUs and accelerator types."""
    return [{"host": n.get("NodeManagerHostname"), "address": n.get("NodeManagerAddress"),
             "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0),
             "accelerators": sorted(k.split(":", 1)[1] for k in n["Resources"] if k.startswith("accelerator_type:"))}
            for n in ray.nodes() if n.get("Alive")]


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
    env = {"RAY_AIR_NEW_OUTPUT": "0", COMMIT_ENV: git_commit()}
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

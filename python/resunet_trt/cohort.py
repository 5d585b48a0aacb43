"""Cohorts: thousands of CT series segmented on Ray, every case recorded, an interrupted run resumable.

The flow of one run::

    inputs (files, DICOM folders) -> case names (segmenter.output_names: the same inputs give the same names)
      -> skip cases the manifest already has as "ok" for the same input and model, outputs present
      -> per case: a reader task (load_ct, gzip, sha256; no CPU reserved) -> the volume in the object store
                   -> a CohortWorker actor (one Segmenter, model loaded once; one per GPU or per group of
                      CPU cores) segments it and writes the outputs atomically, with Segmenter.write_outputs
      -> one row per case: the journal (append + fsync, per case) and the manifest (CSV + Parquet, rewritten
         atomically now and then and at the end)

Reading runs apart from inference: a worker holds at most ``queue_depth`` cases (one being segmented, the next
already read), so a GPU does not wait on gzip, and the driver hands out a new case only when one finishes, so
memory stays bounded whatever the size of the cohort. A worker runs one case at a time, so when it dies the
case it was running is known: the oldest of its unfinished cases.

Failures stay with their case: a file that cannot be read or segmented gets a ``failed`` row with the reason
and the run goes on. A worker that dies (killed, out of memory) is replaced and the case it was running is retried
once; the cases queued behind it are sent again without counting an attempt. When the driver itself stops, the
journal holds every finished case; rerunning into the same output folder skips them.

Ray is imported lazily: ``import resunet_trt.cohort`` needs only numpy and nibabel. Typical use::

    import ray
    from resunet_trt.cohort import run_cohort

    ray.init()                                   # or ray.init(address="auto") on a cluster
    summary = run_cohort(["a.nii.gz", "dicom_series/"], "out/", overlay=True)
    print(summary.done, summary.failed, summary.cases_per_minute)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cohort_manifest import (
    JOURNAL,
    MANIFEST_COLUMNS,
    MANIFEST_CSV,
    MANIFEST_PARQUET,
    TIMING_COLUMNS,
    already_done,
    compact_journal,
    empty_row,
    input_identity,
    ordered_rows,
    previous_rows,
    read_case_list,
    read_manifest,
    write_manifest,
)
from .cohort_worker import EXIT_ONCE_ENV, CohortWorker, load_case
from .naming import output_names
from .outputs import MASK_FORMATS

logger = logging.getLogger(__name__)

# The record (manifest, journal, case lists) and the cluster side have modules of their own; their public names
# stay importable from here.
__all__ = [
    "EXIT_ONCE_ENV", "JOURNAL", "MANIFEST_COLUMNS", "MANIFEST_CSV", "MANIFEST_PARQUET", "TIMING_COLUMNS",
    "CohortSummary", "CohortWorker", "empty_row", "input_identity", "load_case", "read_case_list",
    "read_manifest", "run_cohort", "write_manifest",
]

def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("cohorts need Ray: pip install 'resunet-trt[cohort]' (ray, pyarrow)") from exc
    return ray


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------
@dataclass
class CohortSummary:
    """What :func:`run_cohort` did.

    Attributes:
        rows: the manifest, one row per input, in input order.
        done: cases segmented in this run.
        failed: cases that failed in this run.
        skipped: cases already done by an earlier run (same input, model and outputs).
        retried: cases sent again after their worker died.
        workers_replaced: workers that died and were replaced.
        seconds: wall time of the run (workers started to manifest written).
        startup_s: of which starting the workers (a process each, the model loaded once).
        model_sha256: the model's sha256, as the workers loaded it.
        manifest: the CSV and Parquet manifest paths.
    """

    rows: list[dict[str, Any]]
    done: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    workers_replaced: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0
    model_sha256: str = ""
    manifest: tuple[Path, Path] | None = None
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cases_per_minute(self) -> float:
        """Cases finished (ok or failed) in this run per minute of wall time."""
        n = self.done + self.failed
        return 60.0 * n / self.seconds if self.seconds > 0 else 0.0


class _Progress:
    """Cases done, failed, throughput and ETA: a tqdm bar when tqdm is there, else a log line every 10 s."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.t0 = self._last_log = time.perf_counter()
        self.bar = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                import sys

                self.bar = tqdm(total=total, desc="cohort", unit="case", file=sys.stderr)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        n = self.done + self.failed
        rate = n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - n) / rate if rate > 0 else math.inf
        eta_text = "?" if math.isinf(eta) else f"{eta / 60:.1f} min"
        return (
            f"{n}/{self.total} cases, {self.failed} failed, {60 * rate:.1f} cases/min, ETA {eta_text}"
        )

    def update(self, ok: bool) -> None:
        self.done += ok
        self.failed += not ok
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(ok=self.done, failed=self.failed, refresh=False)
        elif self.enabled and time.perf_counter() - self._last_log >= 10.0:
            self._last_log = time.perf_counter()
            logger.info("cohort: %s", self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            logger.info("cohort: %s", self.line())


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _worker_plan(
    ray: Any, device: str, num_workers: int | None, cpus_per_worker: float | None
) -> tuple[int, dict[str, Any], str]:
    """(number of workers, Ray resource options per worker, the device a worker asks its Segmenter for)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    dev = device.strip().lower()
    use_gpu = dev.startswith("cuda") or (dev == "auto" and gpus > 0)
    if use_gpu:
        if gpus == 0:
            raise ValueError(f"device={device!r} asks for GPUs, but the Ray cluster has none ({resources})")
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so each worker's GPU is its cuda:0.
        return num_workers or gpus, {"num_gpus": 1, "num_cpus": cpus_per_worker or 1}, "cuda"
    # A small machine gets one worker on all its cores (as a plain loop would); a larger one 4-core workers.
    per = cpus_per_worker or (cpus if cpus <= 4 else min(4.0, cpus // 2))
    # Reading needs no reserved CPU (reads are bounded by the queue), but leave it some cores to use.
    count = num_workers or max(1, int((cpus - max(1.0, cpus // 8)) // per))
    return count, {"num_cpus": per}, "cpu"


def run_cohort(
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    device: str = "auto",
    backend: str = "auto",
    segmenter_options: Mapping[str, Any] | None = None,
    overlay: bool = False,
    report: bool = True,
    mask_format: str = "auto",
    num_workers: int | None = None,
    cpus_per_worker: float | None = None,
    queue_depth: int = 2,
    max_retries: int = 1,
    resume: bool = True,
    progress: bool = True,
    flush_seconds: float = 10.0,
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> CohortSummary:
    """Segment a cohort on the Ray cluster this process is connected to (a local one is started if none).

    Args:
        inputs: NIfTI files and DICOM series folders (see :func:`read_case_list` for CSV lists).
        out_dir: output folder: ``<case>_mask.nii.gz`` (+ report, overlay) per case, manifest, journal.
        model: model file as for :class:`resunet_trt.segmenter.Segmenter` (None: the bundled model); on a
            cluster, a path every node can read.
        device: ``"auto"`` (one worker per GPU when the cluster has GPUs, else CPU workers), ``"cpu"`` or
            ``"cuda"``.
        backend: as for :class:`resunet_trt.segmenter.Segmenter`.
        segmenter_options: more keyword arguments of :class:`resunet_trt.segmenter.Segmenter` (``batch_size``,
            ``min_lesion_mm3``, ``num_threads``...); its defaults otherwise, so that a cohort segments as the
            Segmenter alone does.
        overlay: also write PNG overlays.
        report: also write JSON lesion reports.
        mask_format: ``"auto"`` (NIfTI, and a DICOM-SEG for DICOM input), ``"nifti"``, ``"dicom-seg"`` or
            ``"both"`` (see :func:`resunet_trt.segmenter.mask_outputs`).
        num_workers: workers to start (default: one per GPU, or the CPUs divided by ``cpus_per_worker``).
        cpus_per_worker: CPUs each worker reserves and its inference threads (default: 1 beside a GPU;
            else all of a machine of up to 4 CPUs, or min(4, CPUs / 2)).
        queue_depth: cases held per worker (one segmented, the others read and waiting); bounds memory.
        max_retries: times a case is sent again after its worker died.
        resume: skip cases an earlier run into ``out_dir`` finished with the same input and model.
        progress: show a progress bar (or log lines without tqdm).
        flush_seconds: the manifest files are rewritten at most this often during the run (the journal gets
            every case at once).
        on_case: called in this process with each finished row.

    Returns:
        a :class:`CohortSummary`; the manifest is in ``out_dir``.

    Raises:
        TypeError/ValueError: a bad argument, named.
        RuntimeError: the workers cannot start (the model cannot be loaded), or keep dying.
    """
    queue_depth = _check_count(queue_depth, "queue_depth", 1)
    max_retries = _check_count(max_retries, "max_retries", 0)
    if num_workers is not None:
        _check_count(num_workers, "num_workers", 1)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("inputs must list at least one case, got none")
    keys = [os.path.abspath(p) for p in paths]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"inputs must not list the same case twice, got {dup} more than once")
    names = output_names(paths)
    options = _checked_segmenter_options(segmenter_options)
    ray = _import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        logger.info("no Ray cluster connected: starting a local one")
        ray.init(include_dashboard=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    count, resources, worker_device = _worker_plan(ray, device, num_workers, cpus_per_worker)
    seg_kwargs = {
        "model": None if model is None else os.path.abspath(model),
        "device": worker_device,
        "backend": backend,
        **options,
    }
    if worker_device == "cpu":  # each worker's inference threads match the cores it reserved
        seg_kwargs.setdefault("num_threads", max(1, int(resources["num_cpus"])))
    actor_cls = ray.remote(CohortWorker)
    # Reads reserve no CPU: their number is bounded by the queues, and none can starve behind the workers.
    read_task = ray.remote(num_cpus=0, max_retries=2)(load_case)
    run_id = uuid.uuid4().hex[:8]
    spawned = 0

    def spawn() -> tuple[Any, dict[str, Any]]:
        nonlocal spawned
        name = f"resunet-cohort-{run_id}-w{spawned}"
        spawned += 1
        actor = actor_cls.options(name=name, max_concurrency=1, max_restarts=0, **resources).remote(
            seg_kwargs,
            str(out.resolve()),
            overlay=overlay,
            report=report,
            mask_format=mask_format,
            name=name,
        )
        try:
            return actor, ray.get(actor.info.remote())
        except ray.exceptions.RayActorError as exc:
            raise RuntimeError(f"a cohort worker could not start: {exc}") from exc

    workers: dict[str, tuple[Any, dict[str, Any]]] = {}
    try:
        for _ in range(count):
            actor, info = spawn()
            workers[info["name"]] = (actor, info)
    except BaseException:
        for actor, _ in workers.values():
            ray.kill(actor)
        raise
    shas = {info["model_sha256"] for _, info in workers.values()}
    if len(shas) != 1:
        raise RuntimeError(f"the workers loaded different models (sha256 {sorted(shas)}); pass model=")
    model_sha = shas.pop()
    summary = CohortSummary(rows=[], model_sha256=model_sha, workers=[i for _, i in workers.values()])
    summary.startup_s = time.perf_counter() - t_start
    logger.info("cohort: %d workers %s, model sha256 %s", count, resources, model_sha[:12])

    # Resume: earlier rows that stand for this case, with the same input, model and outputs.
    previous = previous_rows(out) if resume else {}
    rows: dict[str, dict[str, Any]] = {}
    candidates = [
        i
        for i, key in enumerate(keys)
        if already_done(
            previous.get(key), names[i], model_sha, overlay=overlay, report=report, mask_format=mask_format
        )
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        identities = dict(zip(candidates, pool.map(lambda i: input_identity(paths[i]), candidates)))
    todo: deque[tuple[int, int]] = deque()  # (case index, attempts so far)
    for i, key in enumerate(keys):
        prev = previous.get(key)
        if i in identities and prev is not None and identities[i] == (
            prev.get("input_sha256") or "",
            prev.get("series_uid") or "",
        ):
            rows[key] = prev
            summary.skipped += 1
        else:
            todo.append((i, 0))
    if summary.skipped:
        logger.info("cohort: %d of %d cases already done, skipped", summary.skipped, len(paths))

    journal = open(out / JOURNAL, "a", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
    bar = _Progress(len(todo), enabled=progress)
    pending: dict[Any, tuple[str, int, int]] = {}  # ref -> (worker name, case index, attempts)
    queued: dict[str, deque[Any]] = {name: deque() for name in workers}
    last_flush = time.perf_counter()

    def finish(index: int, row: dict[str, Any]) -> None:
        nonlocal last_flush
        rows[keys[index]] = row
        journal.write(json.dumps(row, allow_nan=False) + "\n")
        journal.flush()
        os.fsync(journal.fileno())
        summary.done += row["status"] == "ok"
        summary.failed += row["status"] != "ok"
        bar.update(row["status"] == "ok")
        if on_case is not None:
            on_case(row)
        if time.perf_counter() - last_flush >= flush_seconds:
            write_manifest(ordered_rows(rows, keys), out)
            last_flush = time.perf_counter()

    def submit(worker: str, index: int, attempts: int) -> None:
        actor, info = workers[worker]
        # Read where the worker is, so the volume does not cross the network.
        strategy = NodeAffinitySchedulingStrategy(info["node_id"], soft=True)
        loaded = read_task.options(scheduling_strategy=strategy).remote(str(paths[index]))
        row = empty_row(names[index], keys[index])
        row["attempts"] = attempts + 1
        ref = actor.segment.remote(row, loaded)
        pending[ref] = (worker, index, attempts + 1)
        queued[worker].append(ref)

    def replace_dead(worker: str, ref: Any, index: int, attempts: int, exc: BaseException) -> None:
        """A worker died: its oldest case was running and is charged the attempt (retried while it has retries
        left, else failed); the cases queued behind it go back to the front of the queue uncharged."""
        lost = []
        for r in queued.pop(worker):
            if r == ref:
                lost.append((index, attempts))
                continue
            _, i, a = pending.pop(r)
            if ray.wait([r], timeout=0)[0]:  # it finished before the worker died: keep its row
                try:
                    finish(i, ray.get(r))
                    continue
                except ray.exceptions.RayError:
                    pass
            lost.append((i, a))
        workers.pop(worker)
        logger.warning("cohort: worker %s died (%s); replacing it", worker, type(exc).__name__)
        (first, tries), rest = lost[0], lost[1:]
        for i, a in reversed(rest):
            todo.appendleft((i, a - 1))
        if tries <= max_retries:
            todo.appendleft((first, tries))
            summary.retried += 1
        else:
            row = empty_row(names[first], keys[first])
            row.update(attempts=tries, error=f"{keys[first]}: its worker died {tries} times on it: {exc}")
            finish(first, row)
        summary.workers_replaced += 1
        if summary.workers_replaced > max(2, 2 * count):
            raise RuntimeError(f"cohort workers keep dying ({summary.workers_replaced} replaced): {exc}")
        actor, info = spawn()
        workers[info["name"]] = (actor, info)
        queued[info["name"]] = deque()

    try:
        while todo or pending:
            for worker in list(workers):
                while todo and len(queued[worker]) < queue_depth:
                    submit(worker, *todo.popleft())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=10.0)
            for ref in ready:
                if ref not in pending:
                    continue
                worker, index, attempts = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    replace_dead(worker, ref, index, attempts, exc)
                    continue
                except ray.exceptions.RayError as exc:  # a read task that crashed its process, and similar
                    row = empty_row(names[index], keys[index])
                    row.update(attempts=attempts, error=f"{keys[index]}: {type(exc).__name__}: {exc}")
                queued[worker].remove(ref)
                finish(index, row)
    finally:
        bar.close()
        journal.close()
        for actor, _ in workers.values():
            with contextlib.suppress(Exception):
                ray.kill(actor)
        summary.rows = ordered_rows(rows, keys)
        summary.manifest = write_manifest(summary.rows, out)
        # The journal is compacted to one line per input, keeping rows of inputs this run did not list.
        compact_journal(out, {**previous, **rows})
        summary.seconds = time.perf_counter() - t_start
    return summary


def _checked_segmenter_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Segmenter keywords a cohort passes through: any of its constructor's but those the cohort sets."""
    import inspect

    from .segmenter import Segmenter

    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"segmenter_options must be a mapping of Segmenter keywords, got {type(options).__name__}"
        )
    reserved = {"model", "device", "backend", "progress"}
    known = set(inspect.signature(Segmenter.__init__).parameters) - {"self"} - reserved
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"segmenter_options: unknown or reserved keys {unknown}; accepted: {sorted(known)} "
            "(model, device and backend are run_cohort's own arguments)"
        )
    return dict(options)

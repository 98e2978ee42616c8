"""Executors run shard ids on workers and hand each result back to the driver as it arrives.

The interface is one method, `run(job, shard_ids, on_result)`: call `on_result(shard_id, part_bytes)`
for every finished shard (at least once; the driver keeps the first result per id), retry a shard whose
worker died up to `max_retries` times, and raise ShardFailed naming the shard otherwise. Two engines:
LocalExecutor (K processes on this host) and RayExecutor (Ray Core actors on a cluster). Another
engine is one more class with the same method.
"""
from __future__ import annotations

import abc
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence

from ..collect.device import Device
from ..errors import DataError, OptionError, PtqError
from .worker import ShardJob, ShardWorker, init_process, run_in_process

log = logging.getLogger(__name__)

OnResult = Callable[[int, bytes], None]


class ShardFailed(PtqError):
    """A shard could not be computed: its worker kept dying, or its data is unusable."""


def shard_error(job: ShardJob, shard_id: int, exc: BaseException) -> Exception:
    """The error to raise for a shard's exception: data errors name the shard and its files; model and
    option errors are the same for every shard and pass through; anything else is a bug in a worker
    and stays one (not a PtqError, so its traceback is shown)."""
    if isinstance(exc, DataError):
        return ShardFailed(f"{job.describe(shard_id)}: {str(exc).splitlines()[0]}")
    if isinstance(exc, PtqError):
        return exc
    return RuntimeError(f"{job.describe(shard_id)}: worker failed: {exc!r}")


def threads_per_worker(workers: int, cpus: Optional[int] = None) -> int:
    return max(1, (cpus or os.cpu_count() or 1) // max(1, workers))


def check_worker_options(workers: int, max_retries: int, gpus_per_worker: float) -> None:
    if workers < 1:
        raise OptionError(f"--workers must be >= 1, got {workers}")
    if max_retries < 0:
        raise OptionError(f"--max-retries must be >= 0, got {max_retries}")
    if gpus_per_worker < 0:
        raise OptionError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")


class Executor(abc.ABC):
    """Runs shards somewhere; see the module docstring for the contract."""

    #: seconds spent starting workers / connecting to a cluster in the last run (for reports)
    startup_seconds: float = 0.0

    @abc.abstractmethod
    def run(self, job: ShardJob, shard_ids: Sequence[int], on_result: OnResult) -> None:
        """Compute every id in shard_ids; on_result(shard_id, part_bytes) in the calling thread."""


# --- local processes ---------------------------------------------------------------------------------
@contextlib.contextmanager
def workers_ignore_ctrl_c() -> Iterator[None]:
    """Processes started inside never see SIGINT: Ctrl-C reaches the whole foreground process group, and
    each worker (still importing, at start-up) would print its own KeyboardInterrupt traceback.

    SIGINT is blocked in this thread meanwhile: a blocked signal stays blocked in a child across fork and
    exec (Python does not unblock it). Here it is held back, not lost, and not raised half-way through a
    start either (a worker half sent its start-up data dies with a traceback of its own): a Ctrl-C that
    arrives meanwhile is remembered and raised as KeyboardInterrupt on the way out. The driver, which
    handles Ctrl-C, stops the workers itself (LocalExecutor.run)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: Ctrl-C is not a signal to a process group
        yield
        return
    interrupted: List[int] = []
    handler = None
    if threading.current_thread() is threading.main_thread():  # Python runs signal handlers there only
        handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        if interrupted:
            raise KeyboardInterrupt


def stop_processes(pool: ProcessPoolExecutor) -> None:
    """Terminate a pool's worker processes now (they ignore Ctrl-C, and a shard may run for minutes)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


class LocalExecutor(Executor):
    """K worker processes on this host ('spawn' context: no forked onnxruntime or thread state).

    A worker process that dies breaks the whole pool (that is how ProcessPoolExecutor reports it); the
    pool is then restarted and the shards that were running are retried, each counting one attempt.
    At most K shards are submitted at a time, so "running" is known and results do not pile up.
    """

    def __init__(self, workers: int = 2, max_retries: int = 2, context: str = "spawn",
                 gpus_per_worker: float = 0.0) -> None:
        check_worker_options(workers, max_retries, gpus_per_worker)
        self.workers, self.max_retries, self.context = workers, max_retries, context
        self.gpus_per_worker = gpus_per_worker

    def _pool(self, job: ShardJob, workers: int) -> ProcessPoolExecutor:
        context = multiprocessing.get_context(self.context)
        counter = context.Value("i", 0)  # each process takes the next index: its GPU with --gpus-per-worker
        return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_process,
                                   initargs=(job, counter, self.gpus_per_worker))

    def run(self, job: ShardJob, shard_ids: Sequence[int], on_result: OnResult) -> None:
        workers = min(self.workers, len(shard_ids))  # no idle processes for a few shards
        job = job.with_threads(threads_per_worker(workers))
        todo: Deque[int] = deque(shard_ids)
        attempts: Dict[int, int] = {}
        t0 = time.perf_counter()
        pool = self._pool(job, workers)
        self.startup_seconds = time.perf_counter() - t0
        running: Dict[Future, int] = {}
        try:
            while todo or running:
                broken = False
                while todo and len(running) < workers and not broken:
                    try:
                        with workers_ignore_ctrl_c():  # the pool starts its processes in submit
                            running[pool.submit(run_in_process, todo[0])] = todo[0]
                        todo.popleft()
                    except BrokenProcessPool:  # a process died since the last wait
                        broken = True
                # after a break every running future resolves (result or BrokenProcessPool): collect all
                finished, _ = wait(list(running), return_when=ALL_COMPLETED if broken else FIRST_COMPLETED)
                failed = self._collect(job, finished, running, on_result)
                if failed or broken:
                    failed += [running.pop(f) for f in list(running)]
                    self._charge(job, failed, attempts)
                    pool.shutdown(wait=True, cancel_futures=True)
                    todo.extendleft(sorted(failed, reverse=True))
                    pool = self._pool(job, workers)
        except KeyboardInterrupt:
            stop_processes(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _collect(job: ShardJob, finished: Any, running: Dict[Future, int], on_result: OnResult) -> List[int]:
        """Hand finished results to on_result; the ids whose process died (BrokenProcessPool)."""
        died: List[int] = []
        for future in finished:
            shard_id = running.pop(future)
            try:
                sid, data = future.result()
            except BrokenProcessPool:
                died.append(shard_id)
                continue
            except Exception as exc:  # the shard's own error (bad image with --strict, model error)
                raise shard_error(job, shard_id, exc) from exc
            on_result(sid, data)
        return died

    def _charge(self, job: ShardJob, shard_ids: Sequence[int], attempts: Dict[int, int]) -> None:
        for shard_id in sorted(shard_ids):
            attempts[shard_id] = attempts.get(shard_id, 0) + 1
            if attempts[shard_id] > self.max_retries:
                raise ShardFailed(f"{job.describe(shard_id)}: worker process died "
                                  f"{attempts[shard_id]} time(s) (--max-retries {self.max_retries})")
        log.warning("a worker process died while running shard(s) %s; retrying",
                    ", ".join(map(str, sorted(shard_ids))))


# --- Ray ---------------------------------------------------------------------------------------------
def import_ray() -> Any:
    try:
        import ray  # noqa: PLC0415 - optional dependency, imported only for --engine ray
    except ImportError:
        raise OptionError("--engine ray needs Ray: pip install .[ray] (or pip install 'ray>=2.9')") from None
    return ray


class ShardActor:
    """Ray actor body: one ShardWorker per actor (per GPU with --gpus-per-worker)."""

    def __init__(self, job: ShardJob) -> None:
        self.worker: Optional[ShardWorker] = None
        self.job = job

    def run(self, shard_id: int):
        if self.worker is None:  # built lazily: a model error surfaces as this task's exception
            self.worker = ShardWorker(self.job)
        return self.worker.run(shard_id)


def ray_init_error(address: Optional[str], exc: BaseException) -> str:
    """One line for a failed ray.init, in our options' terms: Ray's own message for "auto" with no cluster
    tells the user to set its `--address` flag, which ptqengine does not have."""
    if address == "auto" and isinstance(exc, ConnectionError):
        return ("--ray-address auto: no running Ray cluster found on this machine (start one with "
                "'ray start --head', give its HOST:PORT, or leave out --ray-address to start a local Ray for this run)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"--ray-address {address or '(local)'}: cannot start or join Ray: {first}"


class RayExecutor(Executor):
    """Ray Core actors, one per worker, each running one shard at a time.

    address None starts a local Ray for this run (and stops it afterwards); "auto" or HOST:PORT joins a
    running cluster, whose nodes must see the model and the data at the same paths. If Ray is already
    initialised in this process, that session is used as it is. Ray restarts a dead actor and re-runs
    its task up to max_retries times (at-least-once; the driver drops duplicates). Actors ask for a
    fraction of a CPU when the cluster has fewer CPUs than workers: Ray would otherwise wait forever for
    CPUs the actors already hold.
    """

    def __init__(self, workers: int = 2, max_retries: int = 2, address: Optional[str] = None,
                 gpus_per_worker: float = 0.0, num_cpus: Optional[int] = None) -> None:
        check_worker_options(workers, max_retries, gpus_per_worker)
        self.workers, self.max_retries, self.address = workers, max_retries, address
        self.gpus_per_worker, self.num_cpus = gpus_per_worker, num_cpus

    def _connect(self, ray: Any) -> bool:
        """ray.init unless already initialised; True when this run started Ray (and must stop it)."""
        if ray.is_initialized():
            return False
        kwargs: Dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "log_to_driver": False}
        if self.address:
            kwargs["address"] = self.address
        elif self.num_cpus:
            kwargs["num_cpus"] = self.num_cpus
        try:
            ray.init(**kwargs)
        except Exception as exc:  # unreachable address, no running cluster for "auto"
            raise OptionError(ray_init_error(self.address, exc)) from None
        return True

    def run(self, job: ShardJob, shard_ids: Sequence[int], on_result: OnResult) -> None:
        ray = import_ray()
        t0 = time.perf_counter()
        started = self._connect(ray)
        try:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            workers = min(self.workers, len(shard_ids))
            per_actor = min(1.0, cpus / workers)
            job = job.with_threads(max(1, int(cpus // workers)))
            if self.gpus_per_worker and job.options.device.is_cuda:
                job = job.on_device(Device("cuda", 0))  # Ray makes the actor's GPU the only visible one
            actor_class = ray.remote(ShardActor).options(
                num_cpus=per_actor, num_gpus=self.gpus_per_worker, max_restarts=self.max_retries,
                max_task_retries=self.max_retries)
            actors = [actor_class.remote(job) for _ in range(workers)]
            self.startup_seconds = time.perf_counter() - t0
            try:
                self._dispatch(ray, job, actors, shard_ids, on_result)
            finally:
                for actor in actors:
                    ray.kill(actor)
        finally:
            if started:
                ray.shutdown()

    def _dispatch(self, ray: Any, job: ShardJob, actors: List[Any], shard_ids: Sequence[int],
                  on_result: OnResult) -> None:
        todo: Deque[int] = deque(shard_ids)
        idle: Deque[Any] = deque(actors)
        running: Dict[Any, tuple] = {}  # object ref -> (shard id, actor)
        while todo or running:
            while todo and idle:
                shard_id, actor = todo.popleft(), idle.popleft()
                running[actor.run.remote(shard_id)] = (shard_id, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                shard_id, actor = running.pop(ref)
                try:
                    sid, data = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # died more often than Ray may restart it
                    raise ShardFailed(f"{job.describe(shard_id)}: worker died and was retried "
                                      f"{self.max_retries} time(s) (--max-retries): "
                                      f"{str(exc).splitlines()[0]}") from None
                except ray.exceptions.RayTaskError as exc:
                    raise shard_error(job, shard_id, getattr(exc, "cause", None) or exc) from exc
                idle.append(actor)
                on_result(sid, data)

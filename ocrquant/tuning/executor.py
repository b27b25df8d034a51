"""Where trials run: one interface, three places (in this process, local worker processes, a Ray cluster).

A search (``auto``'s range candidates; the per-layer probes of the budget search's ranking and of
``ocrquant sensitivity``, :mod:`ocrquant.tuning.probes`) hands a list of :class:`Trial` to
:meth:`Executor.map` and gets their results back in the same order. A trial is a pure function of its
spec (model file or bytes, config, sample ids): nothing it reads depends on which process runs it, so
the same search gives the same recipe and scores wherever it runs (``tests/test_tuning.py`` checks
in-process against two local workers and a local Ray instance). The budget search's walk over layer
sets stays in the caller: each set it scores depends on the last one's result.

Failures come back as values, not as a worker's traceback: :func:`run_guarded` wraps each call, and a
failed trial raises :class:`TrialFailed` in the caller, naming the trial, the worker (host, pid) and
the worker's error in one line. The caller's scratch directory is then dropped, so a search never
leaves a half-written model.

Threads: each worker runs onnxruntime with ``cores // workers`` threads (:meth:`Executor.threads`),
so ``--workers 2`` on 2 cores runs two single-threaded trials side by side instead of four threads on
two cores.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Protocol

from ocrquant.errors import OcrQuantError

log = logging.getLogger("ocrquant")

#: seconds to wait for a Ray address to accept a TCP connection before saying it does not answer
RAY_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ExecutorConfig:
    """How trials run: ``workers`` local processes (0 or 1: in this process), or on the Ray cluster at
    ``ray_address`` (``host:port`` of its head, ``ray://host:port`` for Ray Client, ``auto`` for the
    cluster this machine belongs to, ``local`` to start one here)."""

    workers: int = 0
    ray_address: str | None = None


@dataclass(frozen=True)
class Trial:
    """One unit of work: a name the user can read (``mse``, ``percentile-99.99``) and a picklable spec."""

    name: str
    spec: Any


@dataclass(frozen=True)
class TrialOutcome:
    """What :func:`run_guarded` returns: the result, or the error and where it happened."""

    value: Any = None
    error: str | None = None
    worker: str = ""


class TrialFailed(OcrQuantError):
    """A trial raised on a worker; the message names the trial, the worker and its error."""


class Executor(Protocol):
    name: str

    def threads(self) -> int:
        """onnxruntime threads each trial may use."""

    def map(self, fn: Callable[[Any], Any], trials: Sequence[Trial]) -> list[Any]:
        """``fn(trial.spec)`` for every trial, results in the trials' order; :class:`TrialFailed`
        on the first failure (in trial order)."""

    def close(self) -> None: ...


def _worker_name() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def run_guarded(fn: Callable[[Any], Any], spec: Any) -> TrialOutcome:
    """Call ``fn(spec)``; an exception becomes a :class:`TrialOutcome` naming the worker, so every
    executor reports failures the same way (a process pool's or Ray's own traceback would not)."""
    try:
        return TrialOutcome(value=fn(spec), worker=_worker_name())
    except Exception as exc:  # noqa: BLE001 - reported to the caller with the trial's name
        last = traceback.extract_tb(exc.__traceback__)[-1:] or []
        where = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
        message = " ".join(str(exc).split()) or type(exc).__name__
        return TrialOutcome(error=f"{type(exc).__name__}: {message}{where}", worker=_worker_name())


def _results(trials: Sequence[Trial], outcomes: Sequence[TrialOutcome]) -> list[Any]:
    for trial, outcome in zip(trials, outcomes, strict=True):
        if outcome.error is not None:
            raise TrialFailed(f"trial {trial.name} failed on {outcome.worker}: {outcome.error}")
    return [o.value for o in outcomes]


class InProcessExecutor:
    """Trials one after another in this process (the default): no start-up cost, all cores per trial."""

    name = "in-process"

    def threads(self) -> int:
        return max(1, min(2, os.cpu_count() or 1))

    def map(self, fn: Callable[[Any], Any], trials: Sequence[Trial]) -> list[Any]:
        return _results(trials, [run_guarded(fn, t.spec) for t in trials])

    def close(self) -> None:
        pass


class ProcessExecutor:
    """Trials in ``workers`` local processes (spawned: onnxruntime and torch thread pools do not
    survive a fork)."""

    name = "processes"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.workers)

    def map(self, fn: Callable[[Any], Any], trials: Sequence[Trial]) -> list[Any]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        futures = [self._pool.submit(run_guarded, fn, t.spec) for t in trials]
        return _results(trials, [f.result() for f in futures])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the block: native libraries write there directly, past
    Python's ``sys.stderr`` and logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_ray_address(address: str) -> None:
    """Fail in seconds, not after Ray's own minute of retries, when ``host:port`` does not accept a
    connection. ``auto``/``local`` are Ray's to resolve; ``ray://`` addresses are probed the same way."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise OcrQuantError(f"--ray {address}: write HOST:PORT of the cluster's head (or auto, local)")
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OcrQuantError(
            f"--ray {address}: the Ray cluster does not answer "
            f"({reason} within {RAY_CONNECT_TIMEOUT_S:.0f} s)"
        ) from None


class RayExecutor:
    """Trials as Ray tasks (one CPU each) on the cluster at ``address``; this process joins it as a
    driver, or reuses a Ray session already started (``ray.init(num_cpus=2)`` in a test).

    Trials read the model and the images by path, so on a multi-node cluster those paths must be
    visible to every node (a shared file system), and ocrquant must be installed on the nodes."""

    name = "ray"

    def __init__(self, address: str) -> None:
        check_ray_address(address)  # first: an address that does not answer is wrong with or without ray
        try:
            import ray
        except ImportError:
            raise OcrQuantError("--ray needs the ray extra: pip install 'ocrquant[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                # Ray's C++ client logs each retry to fd 2 (20 lines for a port that is not Ray's)
                with _stderr_silenced():
                    if address == "local":
                        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
                    else:
                        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise OcrQuantError(f"--ray {address}: {' '.join(str(exc).split())}") from None
            self._started = True
        else:
            self._started = False
        self._remote = ray.remote(num_cpus=1)(run_guarded)

    def threads(self) -> int:
        return 1

    def map(self, fn: Callable[[Any], Any], trials: Sequence[Trial]) -> list[Any]:
        refs = [self._remote.remote(fn, t.spec) for t in trials]
        return _results(trials, self._ray.get(refs))

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


@contextmanager
def executor_for(config: ExecutorConfig) -> Iterator[Executor]:
    """The executor ``config`` names, closed (workers stopped, a Ray session this process started
    shut down) when the block ends, whatever ended it."""
    executor = create_executor(config)
    try:
        yield executor
    finally:
        executor.close()


def create_executor(config: ExecutorConfig) -> Executor:
    """The executor ``config`` names: Ray when an address is given, else processes for ``workers``
    above 1, else in-process."""
    if config.ray_address:
        return RayExecutor(config.ray_address)
    if config.workers > 1:
        return ProcessExecutor(config.workers)
    return InProcessExecutor()

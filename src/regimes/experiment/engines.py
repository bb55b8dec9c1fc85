"""Where a sweep's trials run: worker processes on this machine, or a Ray cluster.

An engine has `run(jobs, on_result)`: train every job (`sweep.run_job`) and call
`on_result(job, summary)` in this process as each one finishes, in any order; and `close()`
(it is also a context manager), which lets its workers go. A job that
fails comes back with status "failed"; the engine itself only raises when it cannot run
at all (Ray missing, no cluster at the address) or on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from regimes.errors import RegimesError, UsageError
from regimes.experiment.sweep import Job, run_job
from regimes.extras import MissingExtraError, require
from regimes.records import Status
from regimes.registry import Registry

__all__ = ["LocalEngine", "RayEngine", "EngineError", "make_engine", "cpu_cores", "ENGINES"]


class EngineError(RegimesError, RuntimeError):
    """The engine cannot run here (Ray missing); the message says what to install."""


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_device() -> str:
    return "cuda" if _cuda_devices() else "cpu"


class LocalEngine:
    """Trials in `workers` processes on this machine (one worker: in this process).

    Defaults: on CUDA one worker per device, each worker on its own device (when `device`
    is "cuda" without an index); on the CPU `threads` torch threads per trial (default 1)
    and as many workers as the cores allow. Giving `workers` alone shares the cores out.
    """

    def __init__(
        self, workers: int | None = None, threads: int | None = None, device: str | None = None, data_dir=None
    ):
        self.device = device or default_device()
        cores = cpu_cores()
        gpus = _cuda_devices() if self.device.startswith("cuda") else 0
        if workers is None:
            workers = gpus if gpus else max(1, cores // (threads or 1))
        if workers < 1:
            raise UsageError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.threads = threads or max(1, cores // workers)
        # "cuda" with several devices: worker i trains on cuda:(i mod devices).
        if self.device == "cuda" and gpus > 1:
            self.devices = [f"cuda:{i % gpus}" for i in range(workers)]
        else:
            self.devices = [self.device] * workers
        self.data_dir = data_dir
        self._pool = None

    def __repr__(self) -> str:
        return f"LocalEngine(workers={self.workers}, threads={self.threads}, devices={sorted(set(self.devices))})"

    def run(self, jobs: list[Job], on_result) -> None:
        if self.workers == 1:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                for job in jobs:
                    on_result(job, run_job(job, self.devices[0], self.data_dir))
            finally:
                torch.set_num_threads(threads)
            return
        self._run_pool(jobs, on_result)

    def _run_pool(self, jobs: list[Job], on_result) -> None:
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        pool = self._open_pool()
        try:
            futures = {pool.submit(_worker_run, job, self.data_dir): job for job in jobs}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    summary = future.result()
                except BrokenProcessPool as error:  # a worker died (killed, out of memory)
                    summary = {"status": Status.FAILED, "error": f"worker process died: {error}"}
                    self._pool = None  # the next phase starts a new pool
                on_result(job, summary)
        except KeyboardInterrupt:
            # Ask the workers to stop too: each writes its run as "interrupted" and keeps
            # every finished epoch, so the next sweep resumes it.
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                if process.is_alive():
                    os.kill(process.pid, signal.SIGINT)
            self.close(cancel=True)
            raise

    def _open_pool(self):
        """One pool for the whole sweep (the grid, then the seeds): workers start once."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
            devices = context.Queue()
            for device in self.devices:
                devices.put(device)
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_worker, initargs=(self.threads, devices)
            )
        return self._pool

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close(cancel=exc[0] is not None)


# Set in each worker process by _init_worker.
_WORKER_DEVICE = "cpu"


def _init_worker(threads: int, devices) -> None:
    global _WORKER_DEVICE
    _die_with_parent()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    _WORKER_DEVICE = devices.get()
    if _WORKER_DEVICE.startswith("cuda:"):
        torch.cuda.set_device(_WORKER_DEVICE)


def _worker_run(job: Job, data_dir) -> dict:
    try:
        return run_job(job, _WORKER_DEVICE, data_dir)
    except KeyboardInterrupt:
        return {"status": Status.INTERRUPTED, "error": "interrupted"}


def _die_with_parent() -> None:
    """Linux: end this worker when the sweep's process dies (kill -9 included), so no
    orphan keeps training a trial that the next sweep resumes."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class RayEngine:
    """Trials as Ray Tune trials on a Ray cluster (`address`: "auto", "ray://host:10001",
    host:port; None starts a Ray instance on this machine).

    Each trial asks for `cpus` CPUs and `gpus` GPUs (a fraction shares a GPU) and trains
    into its run directory under the sweep folder, so on several nodes that folder must be
    on a file system every node sees at the same path (as Ray Tune's own storage must).
    Every trial's row also comes back to this process, so the tables are complete anyway.
    """

    def __init__(
        self,
        address: str | None = None,
        cpus: float | None = None,
        gpus: float = 0.0,
        device: str | None = None,
        data_dir=None,
    ):
        _import_ray()  # fail before anything starts
        self.address = address
        self.cpus = cpus or 1
        self.gpus = gpus
        self.device = device
        self.data_dir = data_dir
        self._started_ray = False

    def __repr__(self) -> str:
        return f"RayEngine(address={self.address!r}, cpus={self.cpus}, gpus={self.gpus})"

    def run(self, jobs: list[Job], on_result) -> None:
        ray, tune = _import_ray()
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no per-trial tables on the console
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        by_name = {job.name: job for job in jobs}
        reported: set[str] = set()

        class Report(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                name = trial.config["job"]
                reported.add(name)
                on_result(by_name[name], dict(trial.last_result or {"status": Status.FAILED, "error": "no result"}))

            def on_trial_error(self, iteration, trials, trial, **info):
                name = trial.config["job"]
                reported.add(name)
                on_result(by_name[name], {"status": Status.FAILED, "error": "the Ray trial failed (see the Ray logs)"})

        trainable = tune.with_parameters(
            _ray_trial, jobs=by_name, device=self.device, data_dir=self.data_dir, threads=max(1, int(self.cpus))
        )
        storage = os.path.abspath(os.path.join(os.path.dirname(os.path.dirname(jobs[0].out)), ".ray"))
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": self.cpus, "gpu": self.gpus}),
            param_space={"job": tune.grid_search(list(by_name))},
            tune_config=tune.TuneConfig(trial_dirname_creator=lambda trial: trial.config["job"].replace("/", "-")),
            run_config=tune.RunConfig(
                name=jobs[0].name.split("/")[0], storage_path=storage, verbose=0, callbacks=[Report()]
            ),
        )
        tuner.fit()
        for name in by_name:  # results Tune holds but did not pass through the callback
            if name not in reported:
                on_result(by_name[name], {"status": Status.FAILED, "error": "Ray returned no result"})

    def close(self, cancel: bool = False) -> None:
        if self._started_ray:  # a cluster we only connected to stays up
            import ray

            ray.shutdown()
            self._started_ray = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ray_trial(config: dict, jobs=None, device=None, data_dir=None, threads: int = 1) -> dict:
    import ray
    import torch

    torch.set_num_threads(threads)
    job = jobs[config["job"]]
    device = device or ("cuda" if ray.get_gpu_ids() else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
    summary = run_job(job, device, data_dir)
    # Scalars only: Tune flattens and logs what it is given.
    return {k: v for k, v in summary.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _import_ray():
    try:
        return require("ray", "the ray engine"), require("ray.tune", "the ray engine")
    except MissingExtraError as error:  # an EngineError, which the command line reports in one line
        raise EngineError(str(error)) from error


def _local_engine(*, workers, threads, device, data_dir, address, gpus_per_trial) -> LocalEngine:
    return LocalEngine(workers=workers, threads=threads, device=device, data_dir=data_dir)


def _ray_engine(*, workers, threads, device, data_dir, address, gpus_per_trial) -> RayEngine:
    gpus = gpus_per_trial if gpus_per_trial is not None else (1.0 if (device or "").startswith("cuda") else 0.0)
    return RayEngine(address=address, cpus=threads, gpus=gpus, device=device, data_dir=data_dir)


# Engine name -> factory taking make_engine's keyword arguments (each uses those it needs).
ENGINES = Registry("engine", entries={"local": _local_engine, "ray": _ray_engine})


def make_engine(
    name: str, *, workers=None, threads=None, device=None, data_dir=None, address=None, gpus_per_trial=None
) -> LocalEngine | RayEngine:
    return ENGINES.get(name)(
        workers=workers,
        threads=threads,
        device=device,
        data_dir=data_dir,
        address=address,
        gpus_per_trial=gpus_per_trial,
    )

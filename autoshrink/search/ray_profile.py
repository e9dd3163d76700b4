"""The profile's options measured on Ray workers (`--backend ray`): allocate/profile.py's
`measure_option`, run on `workers` Ray actors at once, each on `threads` CPU threads.

`RayOptionMap` is a `map_options` for `profile` (and `allocate`): the inputs every option reads
(the dense model, the cached activations of the slice, calibration statistics, frequencies) go to
the object store once per profile and are deserialized once by each of `workers` Ray actors, each
option is one call on an actor that returns its row, and the rows come back to the driver as they
are done, where `profile` writes them to profile.csv (one writer) and moves the progress bar.
Each actor has at most QUEUED options queued, so a profile that is interrupted leaves little work
behind: the actors are killed, and the rows already written are what the next profile reads back.

Ray is started as the trials' backend starts it (ray_backend.start_ray, the same size) and kept up
for the trials that follow: `close()` (or leaving the `with` block) shuts down a Ray this map
started, none that it joined.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from autoshrink.allocate.profile import OptionJob, ProfileInputs
from autoshrink.search.ray_backend import start_ray


QUEUED = 2  # options queued on each worker: the next one waits there, not on the driver's round trip


class _Worker:
    """One Ray actor: the inputs deserialized once, then option after option."""

    def __init__(self, inputs: ProfileInputs, threads: int):
        torch.set_num_threads(threads)  # as a trial does: parallel options must not fight for cores
        self.inputs = inputs

    def measure(self, measure: Callable[[ProfileInputs, OptionJob], dict], job: OptionJob) -> dict:
        return measure(self.inputs, job)


class RayOptionMap:
    """`map_options(measure, inputs, jobs)` on Ray: each job's row, as it is done."""

    def __init__(self, workers: int = 1, threads: int = 1, address: str | None = None):
        self.workers, self.threads, self.address = workers, threads, address
        self.started = False  # whether this map started Ray (close() then shuts it down)

    def __call__(
        self, measure: Callable[[ProfileInputs, OptionJob], dict], inputs: ProfileInputs, jobs: Sequence[OptionJob]
    ) -> Iterator[dict]:
        import ray

        self.started = start_ray(self.address, self.workers, self.threads) or self.started
        shared = ray.put(inputs)  # once: every worker reads the same model, activations and statistics
        worker = ray.remote(num_cpus=self.threads)(_Worker)
        actors = [worker.remote(shared, self.threads) for _ in range(min(self.workers, len(jobs)))]
        waiting, running = iter(jobs), {}

        def give(actor) -> None:
            job = next(waiting, None)
            if job is not None:
                running[actor.measure.remote(measure, job)] = actor

        try:
            for actor in actors:
                for _ in range(QUEUED):
                    give(actor)
            while running:
                (done,), _ = ray.wait(list(running), num_returns=1)
                give(running.pop(done))  # before the row goes back: the worker never waits on the CSV
                yield ray.get(done)
        finally:  # done, interrupted (Ctrl-C) or failed: nothing is left measuring, the CPUs go to the trials
            for actor in actors:
                ray.kill(actor)

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def __enter__(self) -> RayOptionMap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

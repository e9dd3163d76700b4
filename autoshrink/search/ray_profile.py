"""The profile's options measured on Ray workers (`--backend ray`): allocate/profile.py's
`measure_option`, run as Ray tasks, `workers` at a time, each on `threads` CPU threads.

`RayOptionMap` is a `map_options` for `profile` (and `allocate`): the inputs every option reads
(the dense model, the cached activations of the slice, calibration statistics, frequencies) go to
the object store once per profile, each task gets one option and returns its row, and the rows
come back to the driver as they are done, where `profile` writes them to profile.csv (one writer)
and moves the progress bar. At most `workers` tasks are submitted at a time, so a profile that is
interrupted leaves little work queued: the tasks still running are cancelled, and the rows already
written are what the next profile reads back.

Ray is started as the trials' backend starts it (ray_backend.start_ray, the same size) and kept up
for the trials that follow: `close()` (or leaving the `with` block) shuts down a Ray this map
started, none that it joined.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from autoshrink.allocate.profile import OptionJob, ProfileInputs
from autoshrink.search.ray_backend import start_ray


def _measure_on_worker(measure: Callable, inputs: ProfileInputs, job: OptionJob, threads: int) -> dict:
    torch.set_num_threads(threads)  # as a trial does: parallel options must not fight for cores
    return measure(inputs, job)


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
        shared = ray.put(inputs)  # once: every task reads the same model, activations and statistics
        task = ray.remote(num_cpus=self.threads)(_measure_on_worker)
        waiting = iter(jobs)
        running = [task.remote(measure, shared, job, self.threads) for _, job in zip(range(self.workers), waiting)]
        try:
            while running:
                done, running = ray.wait(running, num_returns=1)
                following = next(waiting, None)
                if following is not None:  # submitted before the row goes back: no worker waits on the CSV
                    running.append(task.remote(measure, shared, following, self.threads))
                yield ray.get(done[0])
        finally:
            for ref in running:  # interrupted (Ctrl-C, an error): nothing is left measuring
                ray.cancel(ref)

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False

    def __enter__(self) -> RayOptionMap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

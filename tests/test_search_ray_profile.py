"""The profile on Ray workers (search/ray_profile.py): the same rows as the serial profile, measured
in the workers while the driver alone writes profile.csv, and an interrupted one resumes from it.
One local Ray (2 CPUs) serves the module's tests: about 40 s here, 20 of them starting Ray, so
they are slow tests (tests/test_allocate_profile.py checks the same order and resume with a map
that needs no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from autoshrink.allocate import profile as profile_module
from autoshrink.allocate.profile import profile
from autoshrink.calibrate import calibrate
from autoshrink.methods.lowrank import LowRankConfig
from autoshrink.methods.prune import PruneConfig
from autoshrink.methods.quant import QuantConfig
from autoshrink.search.ray_profile import RayOptionMap

from allocate_fixtures import trained_lstm

OPTIONS = {
    "encoder": [LowRankConfig(rank=4, bits=8)],
    "rnn.0.hh": [LowRankConfig(rank=2), LowRankConfig(rank=8, bits=4), QuantConfig(bits=4)],
    "rnn.1.ih": [PruneConfig(density=0.2)],  # fine-tuned first: training tokens reach the workers
    "decoder": [LowRankConfig(rank=3), QuantConfig(bits=6)],
}
STEPS = 5


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_map():
    with RayOptionMap(workers=2, threads=1) as options_map:
        yield options_map


@pytest.fixture(scope="module")
def serial():
    """The serial profile, data-aware (calibration statistics), one option fine-tuned."""
    model, train, valid = trained_lstm()
    stats = calibrate(model, train, tokens=1000, cache=False)
    table = profile(
        model, valid, OPTIONS, stats=stats, finetune_steps=STEPS, train_ids=train, progress=False, shared=False
    )
    return model, train, valid, stats, table


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        a.drop(columns=["seconds", "loss_delta"]), b.drop(columns=["seconds", "loss_delta"]), check_dtype=False
    )
    assert list(a["loss_delta"]) == pytest.approx(list(b["loss_delta"]), rel=1e-5, abs=1e-6)


def _fail_here(*args, **kwargs):
    raise AssertionError("an option was built in the driver")


def test_the_workers_measure_the_serial_rows_and_the_driver_writes_them(serial, ray_map, tmp_path, monkeypatch):
    model, train, valid, stats, expected = serial
    monkeypatch.setattr(profile_module, "build_site", _fail_here)  # the driver's only: workers import their own
    path = tmp_path / "profile.csv"
    table = profile(
        model,
        valid,
        OPTIONS,
        stats=stats,
        finetune_steps=STEPS,
        train_ids=train,
        path=path,
        progress=False,
        map_options=ray_map,
        shared=False,  # the workers measure: nothing comes from the cache
    )
    assert ray_map.started
    _same_rows(table, expected)  # rows in the order asked, whatever order the workers finished in
    assert set(table["finetune_steps"]) == {0, STEPS}
    written = pd.read_csv(path, dtype={"model": str, "data": str, "build": str, "knobs": str})
    assert len(written) == len(expected)  # one header, one row per option
    by_option = written.set_index(["site", "knobs"]).loc[list(zip(expected["site"], expected["knobs"]))]
    _same_rows(by_option.reset_index()[expected.columns], expected)


def test_an_interrupted_ray_profile_resumes_from_its_csv(serial, ray_map, tmp_path):
    model, train, valid, stats, expected = serial
    path, kept = tmp_path / "profile.csv", 3

    def interrupted(measure, inputs, jobs):
        for count, row in enumerate(ray_map(measure, inputs, jobs)):
            if count == kept:
                raise KeyboardInterrupt  # Ctrl-C while the workers measure
            yield row

    args = dict(stats=stats, finetune_steps=STEPS, train_ids=train, path=path, progress=False, shared=False)
    with pytest.raises(KeyboardInterrupt):
        profile(model, valid, OPTIONS, map_options=interrupted, **args)
    assert len(pd.read_csv(path)) == kept
    asked = []

    def counting(measure, inputs, jobs):
        asked.extend(jobs)
        return ray_map(measure, inputs, jobs)

    table = profile(model, valid, OPTIONS, map_options=counting, **args)
    assert len(asked) == len(expected) - kept  # only what the interrupted profile had not written
    written = pd.read_csv(path, dtype={"knobs": str})
    assert len(written) == len(expected) and not written.duplicated(["site", "knobs"]).any()
    _same_rows(table, expected)

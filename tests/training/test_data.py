"""Training camera stream: determinism per step (exact resume) and the resolution schedule."""

from __future__ import annotations

import pytest
import torch

from ra3d.errors import ConfigError
from ra3d.training.data import RandomCameraDataModule


def test_batches_are_a_function_of_the_step() -> None:
    dm = RandomCameraDataModule(height=[8, 16], width=[8, 16], batch_size=[2, 1],
                                resolution_milestones=[3], seed=7)  # fmt: skip
    stream = iter(dm.train_dataset)
    batches = [next(stream) for _ in range(5)]
    assert [(len(b), b.height) for b in batches] == [(2, 8)] * 3 + [(1, 16)] * 2
    dm.train_dataset.start_step = 2
    resumed = iter(dm.train_dataset)
    for expected in batches[2:]:
        got = next(resumed)
        torch.testing.assert_close(got.c2w, expected.c2w)
        torch.testing.assert_close(got.fovy, expected.fovy)
    assert not torch.allclose(batches[0].c2w, batches[1].c2w)


def test_orbit_loaders() -> None:
    dm = RandomCameraDataModule(eval_height=12, eval_width=10, n_val_views=4, n_test_views=6)
    val = list(dm.val_dataloader())
    assert len(val) == 4 and val[0].height == 12 and val[0].width == 10
    azimuths = torch.cat([c.azimuth for c in val])
    torch.testing.assert_close(azimuths, torch.tensor([0.0, 90.0, -180.0, -90.0]))
    assert len(list(dm.test_dataloader())) == 6


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"height": [8, 16], "width": [8, 16]}, "resolution_milestones"),
     ({"height": 0}, "height"), ({"fovy_range": (10, 200)}, "fovy_range"),
     ({"n_val_views": 0}, "n_val_views")],
)  # fmt: skip
def test_bad_data_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RandomCameraDataModule(**kwargs)

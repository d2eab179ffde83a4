"""Camera data for training (random views ψ ~ p(ψ)) and evaluation (orbits).

Score distillation has no dataset: a "batch" is a set of cameras. Training batches are generated
from the global step alone (a seeded generator per step), so a run resumed from a checkpoint sees
exactly the cameras it would have seen without the interruption.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ra3d.cameras import Cameras, CameraSampler, orbit_cameras
from ra3d.errors import ConfigError


def _as_list(value: int | Sequence[int], name: str) -> list[int]:
    values = [int(value)] if isinstance(value, int) else [int(v) for v in value]
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{name} must be a positive integer or a list of them, got {value!r}")
    return values


class RandomCameraDataset(IterableDataset):
    """An endless stream of training camera batches with a coarse-to-fine resolution schedule.

    ``height``/``width``/``batch_size`` may be lists; entry ``i`` applies from
    ``resolution_milestones[i - 1]`` on (threestudio's convention: ProlificDreamer renders 64 px
    for the first 5000 steps, then 512 px).
    """

    def __init__(
        self,
        sampler: CameraSampler,
        height: list[int],
        width: list[int],
        batch_size: list[int],
        resolution_milestones: list[int],
        seed: int = 0,
    ) -> None:
        super().__init__()
        n = len(height)
        if len(width) != n or len(batch_size) != n or len(resolution_milestones) != n - 1:
            raise ConfigError(
                "height, width and batch_size must have the same length L and "
                f"resolution_milestones length L-1; got {len(height)}, {len(width)}, "
                f"{len(batch_size)} and {len(resolution_milestones)}"
            )
        if list(resolution_milestones) != sorted(resolution_milestones):
            raise ConfigError(f"resolution_milestones must increase, got {resolution_milestones}")
        self.sampler = sampler
        self.height, self.width, self.batch_size = height, width, batch_size
        self.resolution_milestones = list(resolution_milestones)
        self.seed = seed
        self.start_step = 0

    def stage_for_step(self, step: int) -> int:
        return bisect.bisect_right(self.resolution_milestones, step)

    def cameras_for_step(self, step: int) -> Cameras:
        """The batch of step ``step``; a pure function of (seed, step)."""
        i = self.stage_for_step(step)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.sampler.sample(self.batch_size[i], self.height[i], self.width[i], generator)

    def __iter__(self) -> Iterator[Cameras]:
        step = self.start_step
        while True:
            yield self.cameras_for_step(step)
            step += 1


class OrbitCameraDataset(Dataset):
    """``n_views`` single cameras on an orbit (one item per view, for validation and test)."""

    def __init__(self, cameras: Cameras) -> None:
        self.cameras = cameras

    def __len__(self) -> int:
        return len(self.cameras)

    def __getitem__(self, index: int) -> Cameras:
        return self.cameras[index]


def _identity_collate(items: list[Cameras]) -> Cameras:
    return Cameras.cat(items)


class RandomCameraDataModule(pl.LightningDataModule):
    """Training cameras from :class:`CameraSampler` and orbit cameras for validation/test.

    Defaults follow threestudio's ProlificDreamer coarse stage: distance [1.0, 1.5],
    fovy [40°, 70°], elevation [−10°, 45°], azimuth stratified over [−180°, 180°].
    """

    def __init__(
        self,
        height: int | list[int] = 64,
        width: int | list[int] = 64,
        batch_size: int | list[int] = 1,
        resolution_milestones: list[int] | None = None,
        elevation_range: tuple[float, float] = (-10.0, 45.0),
        azimuth_range: tuple[float, float] = (-180.0, 180.0),
        camera_distance_range: tuple[float, float] = (1.0, 1.5),
        fovy_range: tuple[float, float] = (40.0, 70.0),
        eval_height: int = 512,
        eval_width: int = 512,
        eval_elevation_deg: float = 15.0,
        eval_camera_distance: float = 1.5,
        eval_fovy_deg: float = 70.0,
        n_val_views: int = 8,
        n_test_views: int = 120,
        seed: int = 0,
    ) -> None:
        super().__init__()
        heights = _as_list(height, "height")
        widths = _as_list(width, "width")
        batch_sizes = _as_list(batch_size, "batch_size")
        n_stages = max(len(heights), len(widths), len(batch_sizes))
        if len(heights) == 1:
            heights = heights * n_stages
        if len(widths) == 1:
            widths = widths * n_stages
        if len(batch_sizes) == 1:
            batch_sizes = batch_sizes * n_stages
        for name, value in (("eval_height", eval_height), ("eval_width", eval_width)):
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        for name, value in (("n_val_views", n_val_views), ("n_test_views", n_test_views)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        try:
            sampler = CameraSampler(
                elevation_range=tuple(elevation_range),
                azimuth_range=tuple(azimuth_range),
                distance_range=tuple(camera_distance_range),
                fovy_range=tuple(fovy_range),
            )
        except ValueError as err:
            raise ConfigError(f"data: {err}") from err
        self.train_dataset = RandomCameraDataset(
            sampler, heights, widths, batch_sizes, list(resolution_milestones or []), seed=seed
        )
        self.eval_height, self.eval_width = eval_height, eval_width
        self.eval_elevation_deg = eval_elevation_deg
        self.eval_camera_distance = eval_camera_distance
        self.eval_fovy_deg = eval_fovy_deg
        self.n_val_views, self.n_test_views = n_val_views, n_test_views

    def state_dict(self) -> dict[str, int]:
        """Saved in checkpoints: the step to resume the camera stream from."""
        trainer = self.trainer
        return {"global_step": int(trainer.global_step) if trainer is not None else 0}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        # Lightning restores this before it starts iterating the training loader.
        self.train_dataset.start_step = int(state_dict.get("global_step", 0))

    def orbit(self, n_views: int) -> Cameras:
        return orbit_cameras(
            n_views,
            self.eval_height,
            self.eval_width,
            elevation_deg=self.eval_elevation_deg,
            distance=self.eval_camera_distance,
            fovy_deg=self.eval_fovy_deg,
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=None, num_workers=0)

    def _orbit_loader(self, n_views: int) -> DataLoader:
        dataset = OrbitCameraDataset(self.orbit(n_views))
        return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=_identity_collate)

    def val_dataloader(self) -> DataLoader:
        return self._orbit_loader(self.n_val_views)

    def test_dataloader(self) -> DataLoader:
        return self._orbit_loader(self.n_test_views)

    def predict_dataloader(self) -> DataLoader:
        return self._orbit_loader(self.n_test_views)

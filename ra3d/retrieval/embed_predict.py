"""Caption embedding on several devices or nodes with Lightning's ``Trainer.predict``.

A 2-core machine embeds Objaverse's ≈ 800k Cap3D captions in ≈ 47 min with MiniLM and far
longer with the paper's CLIP ViT-L/14 (Sec. 4.4), so ``ra3d db embed --devices N`` spreads the
chunks of the caption store (:mod:`ra3d.retrieval.embedding_store`) over the ranks of a DDP
strategy instead of a home-made launcher:

* :class:`CaptionChunks` — a ``LightningDataModule`` whose predict ``DataLoader`` yields one
  chunk (a row range of the catalog with its captions) per batch. Rank 0 lists the chunks not
  yet done and broadcasts the list, so every rank shards the *same* list (``list[rank::world]``,
  no padding: Lightning's distributed sampler would repeat chunks to even out the ranks);
* :class:`CaptionEmbeddingModule` — a ``LightningModule`` whose ``predict_step`` embeds a
  batch's captions (float16, the store's dtype);
* :class:`StoreWriter` — a ``BasePredictionWriter`` that writes each batch's rows into the store
  as it finishes (rows flushed, then the chunk marked done), so a killed job resumes where it
  stopped, with any number of devices.

The ranks write disjoint rows of one memory-mapped file, so nothing is gathered or merged at the
end; ``Trainer.predict`` runs with ``return_predictions=False`` and memory stays at one chunk.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ra3d.errors import ConfigError
from ra3d.retrieval.database import AssetDatabase
from ra3d.retrieval.embed import Embedder
from ra3d.retrieval.embedding_store import (
    DEFAULT_CHUNK,
    STORE_DTYPE,
    EmbeddingStore,
    caption_store,
)

logger = logging.getLogger(__name__)


class _ChunkRows(Dataset):
    """The chunks ``chunks`` of ``store`` as ``{"chunk", "start", "stop", "texts"}`` items."""

    def __init__(self, db: AssetDatabase, store: EmbeddingStore, chunks: Sequence[int]) -> None:
        self.db, self.store, self.chunks = db, store, list(chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        chunk = self.chunks[i]
        start, stop = self.store.chunk_range(chunk)
        texts = [c for _, c in self.db.caption_rows(start, stop)]
        return {"chunk": chunk, "start": start, "stop": stop, "texts": texts}


class CaptionChunks(pl.LightningDataModule):
    """Predict data: the store's missing chunks, sharded over the ranks (see the module doc)."""

    def __init__(self, db: AssetDatabase, store: EmbeddingStore, num_workers: int = 0) -> None:
        super().__init__()
        self.db, self.store, self.num_workers = db, store, int(num_workers)
        self.assigned: list[int] = []

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None
        # One list for all ranks: a rank that listed the chunks after another had already
        # finished some would shard a different list and skip or repeat chunks.
        missing = self.store.missing_chunks() if trainer.global_rank == 0 else None
        missing = trainer.strategy.broadcast(missing, src=0)
        self.assigned = list(missing[trainer.global_rank :: trainer.world_size])
        return DataLoader(
            _ChunkRows(self.db, self.store, self.assigned),
            batch_size=None,  # one item = one chunk = one batch
            shuffle=False,
            num_workers=self.num_workers,
        )


class CaptionEmbeddingModule(pl.LightningModule):
    """``predict_step``: a chunk's captions → ``[rows, D]`` float16 unit vectors.

    Args:
        embedder: the embedder (used as is on a CPU rank).
        factory: builds the embedder on a rank's device (``factory(device)``) when that device
            is not the CPU, so each GPU holds its own copy; ``None``: always ``embedder``.
    """

    def __init__(
        self, embedder: Embedder, factory: Callable[[torch.device], Embedder] | None = None
    ) -> None:
        super().__init__()
        self.embedder = embedder
        self.factory = factory
        self._ready = False

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        if not self._ready and self.factory is not None and device.type != "cpu":
            self.embedder = self.factory(device)
        self._ready = True

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        vectors = self.embedder.embed_text(batch["texts"]).cpu().numpy()
        return {"chunk": int(batch["chunk"]), "vectors": vectors.astype(STORE_DTYPE)}


class StoreWriter(BasePredictionWriter):
    """Writes each predicted chunk into the store as soon as it is done; rank 0 shows a bar of
    the captions done by all ranks (counted from the store's done markers), with rate and ETA."""

    def __init__(self, store: EmbeddingStore, progress: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.store = store
        self.progress = bool(progress)
        self._bar: Any = None
        self.written: list[int] = []

    def _done_rows(self) -> int:
        return sum(b - a for a, b in map(self.store.chunk_range, self.store.done_chunks()))

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.progress and trainer.global_rank == 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=len(self.store), initial=self._done_rows(), unit="caption",
                unit_scale=True, desc=f"embedding captions ({trainer.world_size} rank(s))",
                dynamic_ncols=True, smoothing=0.1,
            )  # fmt: skip

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.store.write_chunk(prediction["chunk"], prediction["vectors"])
        self.written.append(prediction["chunk"])
        if self._bar is not None:
            self._bar.n = self._done_rows()
            self._bar.refresh()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.n = self._done_rows()
            self._bar.close()
            self._bar = None


def _strategy(accelerator: str, devices: int, num_nodes: int) -> Any:
    if devices == 1 and num_nodes == 1:
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    # gloo on CPUs (NCCL needs GPUs); Lightning picks NCCL for GPUs by default.
    return DDPStrategy(process_group_backend="gloo" if accelerator == "cpu" else None)


def embed_with_trainer(
    db: AssetDatabase,
    embedder: Embedder,
    *,
    root: Path,
    chunk: int = DEFAULT_CHUNK,
    devices: int = 1,
    accelerator: str = "cpu",
    num_nodes: int = 1,
    factory: Callable[[torch.device], Embedder] | None = None,
    progress: bool = True,
    strategy: Any = None,
) -> tuple[EmbeddingStore, pl.Trainer, StoreWriter]:
    """Fill (or resume) the caption store of ``db`` under ``root`` with ``Trainer.predict``.

    With ``devices > 1`` or ``num_nodes > 1`` the strategy is DDP (gloo on CPUs): Lightning
    starts the other ranks by running this program again, so call this from a script or the
    ``ra3d`` command, not from an interactive session. Every rank returns; only rank 0 should
    report (``trainer.global_rank``).
    """
    if accelerator not in ("cpu", "gpu", "cuda", "auto"):
        raise ConfigError(f"--accelerator must be cpu or gpu, got {accelerator!r}")
    if int(devices) < 1 or int(num_nodes) < 1 or int(chunk) < 1:
        raise ConfigError(
            f"--devices, --num-nodes and --chunk must be >= 1, got {devices}, {num_nodes}, {chunk}"
        )
    store = caption_store(db, embedder, root=root, chunk=int(chunk))
    writer = StoreWriter(store, progress=progress)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=int(devices),
        num_nodes=int(num_nodes),
        strategy=strategy if strategy is not None else _strategy(accelerator, devices, num_nodes),
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        inference_mode=True,
    )
    with warnings.catch_warnings():
        # A chunk per batch has no sampler indices; the writer needs none (chunks name rows).
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
        trainer.predict(
            CaptionEmbeddingModule(embedder, factory),
            datamodule=CaptionChunks(db, store),
            return_predictions=False,
        )
    return store, trainer, writer


__all__ = [
    "CaptionChunks",
    "CaptionEmbeddingModule",
    "StoreWriter",
    "embed_with_trainer",
]

"""Retrieval of captioned 3D assets: database, embedders, vector index, alignment."""

from ra3d.retrieval.base import RetrievedAsset, Retriever

__all__ = ["RetrievedAsset", "Retriever"]

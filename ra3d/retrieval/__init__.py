"""Retrieval of captioned 3D assets (Sec. 4.4): the Retriever interface, the asset database and its
importers, text/image embedders, the vector index, two-stage search and frontal alignment."""

from ra3d.retrieval.base import RetrievedAsset, Retriever

__all__ = ["RetrievedAsset", "Retriever"]

"""``retrieval.licenses`` in a fit: the licence filter of ``ra3d retrieve --licenses`` (issue 17
item 5), applied by the retriever before any mesh is fetched."""

from __future__ import annotations

from pathlib import Path

import pytest

from ra3d.augmentation.assets import RetrievalConfig, retrieve_assets
from ra3d.errors import ConfigError, Ra3dError
from ra3d.retrieval.database import AssetDatabase


def _config(**kwargs: object) -> RetrievalConfig:
    return RetrievalConfig(embedder="minilm", align=False, n_candidates=4, **kwargs)  # type: ignore[arg-type]


def test_fit_licence_filter_keeps_only_allowed_assets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RA3D_DATABASE", raising=False)
    starter = AssetDatabase.builtin()
    licences = {r.license for r in starter.records}
    assert licences == {"CC0-1.0"}  # the starter library is CC0 throughout
    assets, _ = retrieve_assets(_config(licenses=["CC0-1.0"]), "a teddy bear", 2)
    assert len(assets) == 2 and {a.license for a in assets} == {"CC0-1.0"}
    # No starter asset is CC-BY: the filter refuses them all, with one clear error.
    with pytest.raises(Ra3dError, match="(?i)licen"):
        retrieve_assets(_config(licenses=["CC-BY-4.0"]), "a teddy bear", 2)


def test_fit_licence_setting_is_checked_where_it_enters() -> None:
    with pytest.raises(ConfigError, match=r"retrieval\.licenses"):
        _config(licenses=[""]).validate(1)
    with pytest.raises(ConfigError, match=r"retrieval\.licenses"):
        _config(licenses=[]).validate(1)
    _config(licenses=["CC0-1.0", "CC-BY"]).validate(1)

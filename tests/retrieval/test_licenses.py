"""Licence names, the ``licenses`` filter and the credit an Objaverse annotation gives."""

from __future__ import annotations

import pytest

from ra3d.errors import ConfigError
from ra3d.retrieval.licenses import (
    LicenseFilter,
    normalise_license,
    objaverse_provenance,
    unknown_objaverse_provenance,
)

# Objaverse 1.0's annotations carry Sketchfab's slugs; its README lists CC-BY 4.0, CC-BY-NC 4.0,
# CC-BY-NC-SA 4.0, CC-BY-SA 4.0 and CC0 1.0.
OBJAVERSE = {
    "by": "CC-BY-4.0",
    "by-nc": "CC-BY-NC-4.0",
    "by-nc-sa": "CC-BY-NC-SA-4.0",
    "by-sa": "CC-BY-SA-4.0",
    "cc0": "CC0-1.0",
}


@pytest.mark.parametrize(("code", "spdx"), list(OBJAVERSE.items()))
def test_objaverse_slugs_map_to_spdx(code: str, spdx: str) -> None:
    assert normalise_license(code) == spdx
    assert normalise_license(code.upper()) == spdx
    assert normalise_license({"slug": code, "label": "ignored"}) == spdx  # a Sketchfab object


@pytest.mark.parametrize(
    ("text", "spdx"),
    [
        ("CC Attribution", "CC-BY-4.0"),  # Sketchfab's label
        ("cc-by-sa-3.0", "CC-BY-SA-3.0"),
        ("CC0-1.0", "CC0-1.0"),
        ("Creative Commons Zero (Public Domain)", "CC0-1.0"),
        ("Creative Commons Attribution 3.0", "CC-BY-3.0"),
        ("Attribution-NonCommercial-NoDerivs", "CC-BY-NC-ND"),
        ("Public domain", "Public domain"),  # unknown text stays as it is
        ("", ""),
        (None, ""),
    ],
)
def test_free_text_licences(text: object, spdx: str) -> None:
    assert normalise_license(text) == spdx


def test_filter_matches_exact_ids_and_versionless_families() -> None:
    f = LicenseFilter.parse("CC0-1.0, cc-by")
    assert f is not None and f.allowed == ("CC0-1.0", "CC-BY")
    assert f.allows("CC0-1.0") and f.allows("CC-BY-4.0") and f.allows("CC-BY-3.0")
    assert not f.allows("CC-BY-SA-4.0") and not f.allows("CC-BY-NC-4.0")
    assert not f.allows("unknown") and not f.allows("")
    exact = LicenseFilter.parse(["CC-BY-4.0", "by-sa"])  # Objaverse slugs are accepted too
    assert exact is not None and exact.allowed == ("CC-BY-4.0", "CC-BY-SA-4.0")
    assert exact.allows("CC-BY-4.0") and not exact.allows("CC-BY-3.0")
    assert str(exact) == "CC-BY-4.0,CC-BY-SA-4.0"
    assert LicenseFilter.parse(None) is None
    with pytest.raises(ConfigError, match="empty licence"):
        LicenseFilter.parse("CC0-1.0,,CC-BY-4.0")
    with pytest.raises(ConfigError, match="filter is empty"):
        LicenseFilter.parse([])


def test_objaverse_provenance() -> None:
    uid = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    note = objaverse_provenance(uid, {
        "license": "by", "name": "Wood box", "user": {"displayName": "Alice", "username": "al"},
        "viewerUrl": "https://sketchfab.com/3d-models/wood-box", "tags": [{"name": "box"}, {}],
    })  # fmt: skip
    assert note.license == "CC-BY-4.0" and note.title == "Wood box" and note.tags == ["box"]
    assert note.attribution == (
        '"Wood box" by Alice, https://sketchfab.com/3d-models/wood-box, CC-BY-4.0, via Objaverse'
    )
    bare = objaverse_provenance(uid, {"user": {"username": "bob"}})
    assert bare.license == "unknown" and bare.url == f"https://sketchfab.com/3d-models/{uid}"
    assert bare.attribution.startswith(f'"{uid}" by bob, ')
    unknown = unknown_objaverse_provenance(uid)
    assert unknown.license == "unknown" and uid in unknown.attribution
    assert "licence unknown" in unknown.attribution

"""Licences and credits of retrieved assets: SPDX names, the ``licenses`` filter, and the
provenance an Objaverse annotation gives.

Retrieved assets shape generated content, so each keeps its licence and an attribution line
(``retrieved.json``, the export's ``ATTRIBUTION.md``). Sources name licences their own way:
Objaverse's annotations carry Sketchfab's slugs (``"by"``, ``"by-sa"``, ``"by-nc"``,
``"by-nc-sa"``, ``"cc0"``; Objaverse 1.0 holds only these five, all Creative Commons 4.0 except
CC0 1.0), Blend Swap files say "Creative Commons Zero", users type ``cc-by``. Everything is mapped
to SPDX identifiers (``CC-BY-4.0``, ``CC0-1.0``, ...) so that one filter works on every source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ra3d.errors import ConfigError

#: Sketchfab licence slugs (Objaverse's ``license`` annotation) → SPDX. Sketchfab's Creative
#: Commons licences are version 4.0.
SKETCHFAB_LICENSES: dict[str, str] = {
    "cc0": "CC0-1.0",
    "by": "CC-BY-4.0",
    "by-sa": "CC-BY-SA-4.0",
    "by-nd": "CC-BY-ND-4.0",
    "by-nc": "CC-BY-NC-4.0",
    "by-nc-sa": "CC-BY-NC-SA-4.0",
    "by-nc-nd": "CC-BY-NC-ND-4.0",
    "st": "LicenseRef-Sketchfab-Standard",
    "free-st": "LicenseRef-Sketchfab-Free-Standard",
    "ed": "LicenseRef-Sketchfab-Editorial",
}
# Sketchfab's display labels of the same licences (the ``label`` of an API licence object).
_SKETCHFAB_LABELS = {
    "cc attribution": "by",
    "cc attribution-sharealike": "by-sa",
    "cc attribution-noderivs": "by-nd",
    "cc attribution-noncommercial": "by-nc",
    "cc attribution-noncommercial-sharealike": "by-nc-sa",
    "cc attribution-noncommercial-noderivs": "by-nc-nd",
    "cc0 public domain": "cc0",
    "standard": "st",
    "free standard": "free-st",
    "editorial": "ed",
}
_CC_FAMILIES = ("CC-BY", "CC-BY-SA", "CC-BY-ND", "CC-BY-NC", "CC-BY-NC-SA", "CC-BY-NC-ND")
_SPDX_RE = re.compile(r"^cc-by(?:-nc)?(?:-sa|-nd)?-[1-4]\.0$|^cc0-1\.0$", re.I)
# Free-text statements (licence files, catalog properties), most specific first.
_LICENSE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"creative commons zero|\bcc-?0\b|publicdomain/zero", "CC0-1.0"),
    (r"attribution[- ]non-?commercial[- ]share-?alike|by-nc-sa", "CC-BY-NC-SA"),
    (r"attribution[- ]non-?commercial[- ]no-?deriv|by-nc-nd", "CC-BY-NC-ND"),
    (r"attribution[- ]non-?commercial|by-nc\b", "CC-BY-NC"),
    (r"attribution[- ]share-?alike|by-sa", "CC-BY-SA"),
    (r"attribution[- ]no-?deriv|by-nd", "CC-BY-ND"),
    (r"creative commons attribution|\bcc[- ]by\b", "CC-BY"),
)
_VERSION_RE = re.compile(r"(?:^|[^\d.])([1-4]\.0)\b")


def normalise_license(text: Any) -> str:
    """An SPDX identifier for a licence as a source names it; the stripped text when unknown.

    ``"by"`` → ``CC-BY-4.0`` (a Sketchfab slug), ``"cc-by-sa-3.0"`` → ``CC-BY-SA-3.0``,
    ``"Creative Commons Zero"`` → ``CC0-1.0``, ``"CC Attribution 3.0"`` → ``CC-BY-3.0``; a
    Creative Commons statement without a version keeps none (``"CC-BY"``). A Sketchfab licence
    object (``{"slug": "by", "label": ...}``) is read by its slug or label. ``""`` stays ``""``.
    """
    if isinstance(text, Mapping):
        text = text.get("slug") or text.get("label") or ""
    text = str(text or "").strip()
    low = text.lower()
    if not low:
        return ""
    low = _SKETCHFAB_LABELS.get(low, low)
    if low in SKETCHFAB_LICENSES:
        return SKETCHFAB_LICENSES[low]
    if _SPDX_RE.match(low):
        return low.upper()
    for pattern, ident in _LICENSE_PATTERNS:
        if re.search(pattern, low):
            if ident == "CC0-1.0":
                return ident
            version = _VERSION_RE.search(low)
            return f"{ident}-{version.group(1)}" if version else ident
    return text


@dataclass(frozen=True)
class LicenseFilter:
    """Which licences a retrieval (or an import) accepts.

    Each entry is normalised by :func:`normalise_license`. An entry with a version
    (``CC-BY-4.0``) accepts exactly that licence; a Creative Commons family without one
    (``CC-BY``) accepts every version of it (CC-BY-3.0, CC-BY-4.0, not CC-BY-SA-4.0); any other
    text must match exactly (case-insensitive). An asset whose licence is not known is refused.
    """

    allowed: tuple[str, ...]

    @classmethod
    def parse(cls, licenses: Sequence[str] | str | None) -> LicenseFilter | None:
        """``None`` (no filter) or the filter of ``licenses`` (a list, or one comma-separated
        string such as ``"CC0-1.0,CC-BY-4.0"``). Empty entries are a :class:`ConfigError`."""
        if licenses is None:
            return None
        items: Iterable[str] = licenses.split(",") if isinstance(licenses, str) else licenses
        entries: list[str] = []
        for item in items:
            if not isinstance(item, str):
                raise ConfigError(f"licences must be strings such as 'CC0-1.0', got {item!r}")
            parts = [p.strip() for p in item.split(",")]
            if not all(parts):
                raise ConfigError(
                    f"empty licence in {licenses!r}; give SPDX ids such as CC0-1.0,CC-BY-4.0"
                )
            entries += [normalise_license(p) for p in parts]
        if not entries:
            raise ConfigError(
                "the licence filter is empty: give at least one licence (e.g. CC0-1.0) or no "
                "filter at all"
            )
        return cls(tuple(dict.fromkeys(entries)))

    def allows(self, license: str) -> bool:
        """True when an asset under ``license`` may be used."""
        if not license or license.lower() == "unknown":
            return False
        low = license.lower()
        for entry in self.allowed:
            e = entry.lower()
            if low == e:
                return True
            if entry in _CC_FAMILIES and re.fullmatch(re.escape(e) + r"-[1-4]\.0", low):
                return True
        return False

    def __str__(self) -> str:
        return ",".join(self.allowed)


@dataclass
class Provenance:
    """Licence and credit of one asset, as a source's annotation gives them."""

    license: str
    attribution: str
    title: str = ""
    url: str = ""
    tags: list[str] = field(default_factory=list)


def objaverse_url(uid: str) -> str:
    """The Sketchfab page of Objaverse object ``uid`` (Objaverse 1.0 is Sketchfab's uploads)."""
    return f"https://sketchfab.com/3d-models/{uid}"


def objaverse_provenance(uid: str, annotation: Mapping[str, Any]) -> Provenance:
    """Licence and attribution of Objaverse object ``uid`` from its annotation
    (``objaverse.load_annotations``): ``license``, ``name``, ``user.displayName`` /
    ``user.username``, ``viewerUrl`` and ``tags``."""
    license = normalise_license(annotation.get("license")) or "unknown"
    user = annotation.get("user")
    user = user if isinstance(user, Mapping) else {}
    author = str(user.get("displayName") or user.get("username") or "unknown author")
    name = str(annotation.get("name") or uid)
    url = str(annotation.get("viewerUrl") or objaverse_url(uid))
    tags = [
        str(t.get("name"))
        for t in annotation.get("tags") or []
        if isinstance(t, Mapping) and t.get("name")
    ]
    return Provenance(
        license=license,
        attribution=f'"{name}" by {author}, {url}, {license}, via Objaverse',
        title=str(annotation.get("name") or ""),
        url=url,
        tags=tags,
    )


def unknown_objaverse_provenance(uid: str) -> Provenance:
    """What is recorded for an Objaverse object whose annotation could not be fetched: the
    credit still names the object's page, and the licence says it is not known."""
    url = objaverse_url(uid)
    return Provenance(
        license="unknown",
        attribution=f"Objaverse object {uid}, {url}, licence unknown (annotation not fetched), "
        "via Objaverse",
        url=url,
    )


__all__ = [
    "SKETCHFAB_LICENSES",
    "LicenseFilter",
    "Provenance",
    "normalise_license",
    "objaverse_provenance",
    "objaverse_url",
    "unknown_objaverse_provenance",
]

"""Importers that fill an AssetDatabase, one module per source (``folder``: meshes + captions
CSV, ``sh3f``: Sweet Home 3D catalogs, ``objaverse``: Objaverse + Cap3D) and ``common``."""

from ra3d.retrieval.importers.common import (
    AssetImportWarning,
    ImportResult,
    MeshValidator,
    UnsafeArchiveError,
    mesh_dependencies,
)
from ra3d.retrieval.importers.folder import MESH_SUFFIXES, import_folder
from ra3d.retrieval.importers.objaverse import (
    AnnotationsFn,
    Cap3DReport,
    Cap3DRow,
    DownloadFn,
    ObjaverseImportResult,
    import_objaverse,
    iter_cap3d_rows,
    read_cap3d_captions,
)
from ra3d.retrieval.importers.sh3f import (
    DAMAGED_ZIP_ERRORS,
    BlendSwapLicense,
    Sh3fCatalog,
    Sh3fPiece,
    check_archive_members,
    clean_title,
    import_sh3f,
    normalise_license,
    parse_blendswap_license,
    parse_java_properties,
    read_sh3f_catalog,
    sh3f_attribution,
    sh3f_caption,
)

__all__ = [
    "DAMAGED_ZIP_ERRORS",
    "MESH_SUFFIXES",
    "AnnotationsFn",
    "AssetImportWarning",
    "BlendSwapLicense",
    "Cap3DReport",
    "Cap3DRow",
    "DownloadFn",
    "ImportResult",
    "MeshValidator",
    "ObjaverseImportResult",
    "Sh3fCatalog",
    "Sh3fPiece",
    "UnsafeArchiveError",
    "check_archive_members",
    "clean_title",
    "import_folder",
    "import_objaverse",
    "import_sh3f",
    "iter_cap3d_rows",
    "mesh_dependencies",
    "normalise_license",
    "parse_blendswap_license",
    "parse_java_properties",
    "read_cap3d_captions",
    "read_sh3f_catalog",
    "sh3f_attribution",
    "sh3f_caption",
]

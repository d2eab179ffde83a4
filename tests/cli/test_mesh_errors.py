"""Malformed and unsafe meshes at the three doors a user opens (issue 17, item 6): ``ra3d fit``
with ``--model.retrieval.assets``, ``ra3d adapt --assets`` and ``ra3d db import folder``.

fit and adapt stop with exit code 2 and exactly one ``ra3d: error:`` line naming the problem, never
a traceback, and before any model is loaded (fit: in the preflight checks; adapt: before the
prior). The folder importer keeps its contract: it skips an invalid mesh and lists the
validator's one-line reason in one warning (exit 0 when something was imported, 1 when nothing).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from ra3d.cli import main
from ra3d.representations.mesh import MeshAsset
from tests.paths import CONFIGS
from tests.representations.test_mesh_validation import KINDS, triangle_obj

DEMO = str(CONFIGS / "demo.yaml")

#: The kinds run through the commands (each command is seconds; the loader tests cover all).
CLI_KINDS = (
    "nan_vertices",
    "obj_without_faces",
    "face_out_of_range",
    "empty_glb",
    "glb_claiming_4gb",
    "truncated_glb",
    "buffer_file_url",
    "buffer_http_url",
    "buffer_absolute_path",
    "buffer_parent_path",
    "obj_mtllib_parent",
    "mtl_map_outside",
)


def _stderr_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    return [
        h
        for lg in loggers
        if isinstance(lg, logging.Logger)
        for h in lg.handlers
        if type(h) is logging.StreamHandler
    ]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``ra3d *argv`` in this process: (exit code, stdout, stderr).

    Library loggers (Lightning's) keep the ``sys.stderr`` of the moment they were created; under
    capsys that is an earlier test's stream, closed by now, and they would print a "--- Logging
    error ---" traceback a real ``ra3d`` process never prints. They are pointed at this call's
    stderr meanwhile."""
    handlers = _stderr_handlers()
    old = [h.stream for h in handlers]
    for h in handlers:
        h.stream = sys.stderr
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for h, stream in zip(handlers, old, strict=True):
            h.stream = stream
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("ra3d") and "error" in ln]


def bad_mesh(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / "meshes"
    folder.mkdir()
    return KINDS[kind][0](folder)


@pytest.fixture(autouse=True)
def _no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build a diffusion prior fails the test: the mesh error must come first."""
    import ra3d.guidance.prior as prior

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a diffusion prior was loaded before the mesh was checked")

    monkeypatch.setattr(prior.DiffusionPrior, "__init__", refuse)


@pytest.mark.parametrize("kind", ["nan_vertices", "glb_claiming_4gb", "buffer_file_url",
                                  "obj_mtllib_parent"])  # fmt: skip
def test_fit_with_a_bad_user_mesh(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    path = bad_mesh(tmp_path, kind)
    code, out, err = run(
        capsys, "fit", "--config", DEMO, "--model.retrieval.assets", f"[{path}]",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    )  # fmt: skip
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("ra3d: error: model.retrieval.assets[0]: ")
    assert KINDS[kind][1] in lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("kind", CLI_KINDS)
def test_adapt_with_a_bad_user_mesh(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str
) -> None:
    path = bad_mesh(tmp_path, kind)
    code, out, err = run(
        capsys, "adapt", "--assets", str(path), "--captions", "a thing", "--prior", "ra3d/tiny-sd",
        "--device", "cpu", "--no-progress",
    )  # fmt: skip
    lines = error_lines(err)
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("ra3d: error: ") and KINDS[kind][1] in lines[0]
    assert "Traceback" not in out + err


def test_db_import_folder_skips_each_bad_mesh_with_the_validators_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rows = ["path,caption"]
    for kind in CLI_KINDS:
        sub = src / kind
        sub.mkdir()
        mesh = KINDS[kind][0](sub)
        rows.append(f"{mesh.relative_to(src).as_posix()},a {kind.replace('_', ' ')}")
    (src / "good.obj").write_text(triangle_obj())
    rows.append("good.obj,a good triangle")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    out_db = tmp_path / "db"
    code, out, err = run(
        capsys, "db", "import", "folder", str(src), "--captions", str(tmp_path / "captions.csv"),
        "--db", str(out_db),
    )  # fmt: skip
    assert code == 0, err
    assert "imported 1 asset(s), skipped 12" in out
    assert "Traceback" not in out + err
    warning = [ln for ln in err.splitlines() if ln.startswith("ra3d db: warning:")]
    assert len(warning) == 1, err
    for kind in CLI_KINDS:
        assert KINDS[kind][1] in warning[0], kind
    assert not error_lines(err)
    # Nothing outside the database's own folder was copied in (the ../ targets, /etc/passwd).
    copied = {p.name for p in out_db.rglob("*") if p.is_file()}
    assert not copied & {"outside.bin", "x.mtl", "passwd"}


def test_db_import_folder_of_only_bad_meshes_returns_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    mesh = KINDS["truncated_glb"][0](src)
    (tmp_path / "c.csv").write_text(f"{mesh.name},a cut glb\n")
    code, out, err = run(
        capsys, "db", "import", "folder", str(src), "--captions", str(tmp_path / "c.csv"),
        "--db", str(tmp_path / "db"),
    )  # fmt: skip
    assert code == 1 and "truncated" in err and "Traceback" not in out + err


def test_resume_whose_asset_file_changed_reports_the_mesh(tmp_path: Path) -> None:
    """A resume rebuilds the recorded assets from their files (check_recorded_assets, mesh_for):
    a file replaced by a broken one since is one ConfigError naming it."""
    from ra3d.augmentation.assets import (
        RetrievalConfig,
        check_recorded_assets,
        mesh_for,
        user_assets,
    )
    from ra3d.errors import ConfigError

    path = tmp_path / "chair.obj"
    path.write_text(triangle_obj())
    (asset,) = user_assets(RetrievalConfig(assets=[str(path)]), "a chair")
    recorded = {"assets": [asset.to_json()]}
    (again,) = check_recorded_assets(recorded)
    assert isinstance(mesh_for(again, 0.5), MeshAsset)
    path.write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")  # changed after the run started
    (again,) = check_recorded_assets(recorded)
    with pytest.raises(ConfigError, match="NaN or infinite vertex coordinates") as caught:
        mesh_for(again, 0.5)
    assert str(path) in str(caught.value)

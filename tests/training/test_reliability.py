"""Faults and bad inputs: a crash, a signal, a divergence or a bad setting never costs a good result
and never ends in a traceback.

Every case asserts the exit code (see ra3d.errors), the message, that no traceback was printed and
that the good files of an earlier run are byte-for-byte intact. Runs use the toy system pieces of
tests/toys.py at 8 px so a real ``ra3d fit`` takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from ra3d.cli import main
from ra3d.errors import RunFolderBusy, TrainingDiverged
from ra3d.retrieval.importers import import_sh3f
from ra3d.training.callbacks import DivergenceGuard, FinalCheckpoint, save_checkpoint_atomic
from ra3d.training.checkpoint import read_checkpoint
from ra3d.training.data import RandomCameraDataModule
from ra3d.training.run_folder import RunLock
from ra3d.training.system import Ra3dSystem
from tests.toys import ColorField, NoisyTargetGuidance


def toy_config(tmp: Path, **overrides: object) -> Path:
    """A complete ``ra3d fit`` config of the toy system; the run folder is ``tmp/out/toy/...``."""
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "max_steps": 8, "accelerator": "cpu", "val_check_interval": 4,
            "limit_val_batches": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
            "enable_checkpointing": False, "enable_model_summary": False,
            "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp / "out"), "name": "toy"}},
            "callbacks": [{"class_path": "ra3d.training.callbacks.FinalCheckpoint",
                           "init_args": {"every_n_train_steps": 2}}],
        },
        "model": {
            "prompt": "a cube", "n_particles": 2,
            "representation": {"class_path": "tests.toys.ColorField"},
            "guidance": {"class_path": "tests.toys.NoisyTargetGuidance"},
            "loss_weights": {"guidance": 1.0, "sparsity": 0.1},
            "learning_rates": {"encoding": 0.05, "default": 0.01},
        },
        "data": {"height": 8, "width": 8, "batch_size": 2, "eval_height": 8, "eval_width": 8,
                 "n_val_views": 2, "n_test_views": 2},
    }  # fmt: skip
    for dotted, value in overrides.items():
        node = cfg
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # jsonargparse reports parse errors by exiting
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished toy run (8 steps); tests must leave its files as they are."""
    tmp = tmp_path_factory.mktemp("good")
    assert main(["fit", "--config", str(toy_config(tmp))]) == 0
    return tmp / "out" / "toy" / "version_0"


# ------------------------------------------------------------------ divergence
def make_system(loss_weights: dict) -> Ra3dSystem:
    return Ra3dSystem(prompt="a cube", representation=ColorField, guidance=NoisyTargetGuidance(),
                      n_particles=2, loss_weights=loss_weights,
                      learning_rates={"encoding": 0.05, "default": 0.01})  # fmt: skip


def fit(root: Path, system: Ra3dSystem, max_steps: int, guard: DivergenceGuard) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", default_root_dir=root,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=0,
                         callbacks=[FinalCheckpoint(every_n_train_steps=2), guard])  # fmt: skip
    trainer.fit(system, RandomCameraDataModule(height=6, width=6, batch_size=2, seed=3))
    return trainer


def test_divergence_skips_bad_updates_stops_and_keeps_good_weights(tmp_path: Path) -> None:
    """Loss weight 1e39 from step 5 on (inf in float32): steps 5, 6, 7 are skipped, the run stops
    after the third, and the checkpoint holds exactly the weights of a run that stopped after
    step 4 — the same 5 good updates, no NaN."""
    bomb = {"guidance": [4, 1.0, 1.0e39, 5], "sparsity": 0.1}
    diverging = make_system(bomb)
    with pytest.raises(TrainingDiverged, match="3 steps in a row"):
        fit(tmp_path / "a", diverging, 50, DivergenceGuard(max_consecutive=3))
    _, state, _ = read_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt")
    checkpoint = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8  # 5 good + 3 skipped steps

    reference = make_system({"guidance": 1.0, "sparsity": 0.1})
    fit(tmp_path / "b", reference, 5, DivergenceGuard())
    for key, value in reference.state_dict().items():
        if key.startswith("particles.") or key == "guidance.adapter":
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)


class NaNAtSteps(NoisyTargetGuidance):
    """The toy guidance whose loss is NaN at the chosen global steps."""

    def __init__(self, bad_steps: tuple[int, ...]) -> None:
        super().__init__()
        self.bad_steps = set(bad_steps)
        self.step = 0

    def update_step(self, epoch: int, global_step: int, max_steps: int) -> None:
        self.step = global_step

    def forward(self, rgb, cameras, prompt, reference_rgb=None):  # noqa: ANN001, ANN201
        out = super().forward(rgb, cameras, prompt, reference_rgb)
        if self.step in self.bad_steps:
            out.loss = out.loss * float("nan")
            out.terms = {name: value * float("nan") for name, value in out.terms.items()}
        return out


def test_isolated_nan_steps_are_skipped_and_the_run_finishes(tmp_path: Path) -> None:
    """NaN at steps 2 and 4 (never twice in a row, limit 2): the run finishes, and each skipped
    step leaves every parameter exactly as the step before left it."""
    system = Ra3dSystem(prompt="a cube", representation=ColorField,
                        guidance=NaNAtSteps((2, 4)), n_particles=1)  # fmt: skip
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    class Snapshot(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # noqa: ANN001
            snapshots[trainer.global_step] = {
                k: v.clone() for k, v in pl_module.particles.state_dict().items()
            }

    guard = DivergenceGuard(max_consecutive=2)
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, limit_val_batches=0,
                         callbacks=[guard, Snapshot()])  # fmt: skip
    trainer.fit(system, RandomCameraDataModule(height=6, width=6, batch_size=1, seed=3))
    assert trainer.global_step == 6 and guard.skipped_total == 2
    for bad in (2, 4):  # snapshot after step `bad` (global_step bad+1) == after step bad-1
        for key, value in snapshots[bad + 1].items():
            torch.testing.assert_close(value, snapshots[bad][key], rtol=0, atol=0)
    assert not torch.equal(snapshots[4]["0.weight"], snapshots[3]["0.weight"])  # good step moved


def test_save_never_replaces_a_good_checkpoint_with_nan_weights(tmp_path: Path) -> None:
    system = make_system({"guidance": 1.0})
    trainer = fit(tmp_path, system, 2, DivergenceGuard())
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    before = digest(ckpt)
    with torch.no_grad():
        system.particles[1].weight[0, 0] = float("nan")
    assert save_checkpoint_atomic(trainer, ckpt) is False
    assert digest(ckpt) == before and not ckpt.with_name("last.ckpt.tmp").exists()


def test_cli_divergence_exit_code_and_nonfinite_checkpoint_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], good_run: Path
) -> None:
    config = toy_config(tmp_path, **{"model.loss_weights": {"guidance": [3, 1.0, 1.0e39, 4]}})
    code, out = run(capsys, "fit", "--config", str(config), "--trainer.max_steps", "40")
    assert code == 3, out
    assert "training diverged" in out and "Traceback" not in out
    ckpt = tmp_path / "out" / "toy" / "version_0" / "checkpoints" / "last.ckpt"
    _, state, _ = read_checkpoint(ckpt)
    assert all(bool(v.isfinite().all()) for v in state.values())

    # a checkpoint with NaN weights (e.g. from an older ra3d) is refused by test and resume
    bad = tmp_path / "nan.ckpt"
    checkpoint = torch.load(good_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["state_dict"]["particles.0.weight"][0, 0] = float("nan")
    torch.save(checkpoint, bad)
    for command in ("test", "fit"):
        code, out = run(capsys, command, "--config", str(config), "--ckpt_path", str(bad))
        assert code == 2 and "non-finite weights" in out and "Traceback" not in out


# ------------------------------------------------------------------ bad inputs
def bad_inputs(tmp: Path, good_run: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (tmp / "empty.ckpt").write_bytes(b"")
    (tmp / "random.ckpt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy())
    good = good_run / "checkpoints" / "last.ckpt"
    (tmp / "truncated.ckpt").write_bytes(good.read_bytes()[:400])
    (tmp / "a_file").write_text("x")
    (tmp / "hash.yaml").write_text(yaml.safe_dump({"model": {"representation": {
        "class_path": "ra3d.representations.nerf.InstantNGPNeRF",
        "init_args": {"n_samples_per_ray": 4, "hidden_dim": 8,
                      "encoding": {"n_levels": 2, "log2_hashmap_size": 40, "backend": "torch"}},
    }}}))  # fmt: skip
    cfg = str(toy_config(tmp))
    return {
        "binary config": (["fit", "--config", str(tmp / "binary.yaml")], "not a text (YAML)"),
        "config is a directory": (["fit", "--config", str(tmp)], "is a directory"),
        "negative max_steps": (["fit", "--config", cfg, "--trainer.max_steps", "-5"],
                               "trainer.max_steps must be a positive"),
        "zero particles": (["fit", "--config", cfg, "--model.n_particles", "0"],
                           "n_particles must be an integer >= 1"),
        "empty prompt": (["fit", "--config", cfg, "--prompt", " "], "prompt is empty"),
        "huge render": (["fit", "--config", cfg, "--data.height", "100000"],
                        "above the limit of 16384 px"),
        "not enough memory": (["fit", "--config", cfg, "--data.height", "16000", "--data.width",
                               "16000", "--data.batch_size", "64"],
                              "one training step needs at least"),
        "hash table too large": (["fit", "--config", cfg, "--config", str(tmp / "hash.yaml")],
                                 "log2_hashmap_size must be in [1, 30], got 40"),
        "empty checkpoint": (["fit", "--config", cfg, "--ckpt_path", str(tmp / "empty.ckpt")],
                             "cannot be read as a checkpoint"),
        "random checkpoint": (["test", "--config", cfg, "--ckpt_path", str(tmp / "random.ckpt")],
                              "cannot be read as a checkpoint"),
        "truncated checkpoint": (["validate", "--config", cfg, "--ckpt_path",
                                  str(tmp / "truncated.ckpt")], "cannot be read as a checkpoint"),
        "checkpoint is a directory": (["test", "--config", cfg, "--ckpt_path", str(good_run)],
                                      "is a directory"),
        "test without checkpoint": (["test", "--config", cfg], "pass its checkpoint"),
        "validate with last": (["validate", "--config", cfg, "--ckpt_path", "last"],
                               "--ckpt_path last is not supported"),
        "resume with another prompt": (["fit", "--config", cfg, "--prompt", "a dog",
                                        "--ckpt_path", str(good)], "trained for the prompt"),
        "output folder is a file": (["fit", "--config", cfg, "--trainer.logger.init_args.save_dir",
                                     str(tmp / "a_file")], "Not a directory"),
        "output on a read-only file system": (
            ["fit", "--config", cfg, "--trainer.logger.init_args.save_dir", "/sys/ra3d"],
            "cannot write the run folder"),
        "new run into a folder holding a run": (
            ["fit", "--config", cfg, "--trainer.logger.init_args.save_dir",
             str(good_run.parent.parent), "--trainer.logger.init_args.version", "0"],
            "already holds a run"),
    }  # fmt: skip


CASES = [
    "binary config", "config is a directory", "negative max_steps", "zero particles",
    "empty prompt", "huge render", "not enough memory", "hash table too large", "empty checkpoint",
    "random checkpoint", "truncated checkpoint", "checkpoint is a directory",
    "test without checkpoint", "validate with last", "resume with another prompt",
    "output folder is a file", "output on a read-only file system",
    "new run into a folder holding a run",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_message(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], good_run: Path
) -> None:
    if case == "output on a read-only file system" and os.access("/sys", os.W_OK):
        probe = Path("/sys/ra3d")
        try:
            probe.mkdir()
        except OSError:
            pass
        else:  # pragma: no cover - /sys is read-only on Linux
            probe.rmdir()
            pytest.skip("/sys is writable here")
    files = {p: digest(p) for p in good_run.rglob("*") if p.is_file()}
    argv, expected = bad_inputs(tmp_path, good_run)[case]
    code, out = run(capsys, *argv)
    assert code == 2, out
    assert expected in out and "Traceback" not in out
    assert out.count("ra3d: error:") == 1
    assert {p: digest(p) for p in good_run.rglob("*") if p.is_file()} == files


# ------------------------------------------------------------------ run folders
def test_run_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    parent = {"pid": os.getppid(), "host": os.uname().nodename, "started": "earlier"}
    lock.path.write_text(json.dumps(parent))
    with pytest.raises(RunFolderBusy, match=f"PID {os.getppid()}"):
        RunLock(tmp_path).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.path.write_text(json.dumps({**parent, "pid": dead.pid}))
    taken = RunLock(tmp_path).acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    taken.release()
    assert not lock.path.exists()


def test_resume_keeps_history_config_and_exact_step_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 4-step run resumed to 8 steps in its own folder: metrics.csv has each step 0..7 once,
    with the values of an uninterrupted 8-step run; config.yaml is kept, the resume's config is
    config.resume-1.yaml; a second run into the folder while it is locked is refused (exit 4)."""
    straight = tmp_path / "straight"
    straight.mkdir()
    assert run(capsys, "fit", "--config", str(toy_config(straight)))[0] == 0
    expected = metrics_rows(straight / "out" / "toy" / "version_0")

    config = toy_config(tmp_path)
    assert run(capsys, "fit", "--config", str(config), "--trainer.max_steps", "4")[0] == 0
    run_dir = tmp_path / "out" / "toy" / "version_0"
    first_config = digest(run_dir / "config.yaml")
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")

    (run_dir / "ra3d.lock").write_text(json.dumps({"pid": os.getppid(),
                                                   "host": os.uname().nodename}))  # fmt: skip
    code, out = run(capsys, "fit", "--config", str(config), "--ckpt_path", ckpt)
    assert code == 4 and "in use by another run" in out and "Traceback" not in out
    (run_dir / "ra3d.lock").unlink()

    code, out = run(capsys, "fit", "--config", str(config), "--ckpt_path", ckpt)
    assert code == 0, out
    assert not (tmp_path / "out" / "toy" / "version_1").exists()  # resumed into its own folder
    assert digest(run_dir / "config.yaml") == first_config
    assert (run_dir / "config.resume-1.yaml").is_file()
    assert not (run_dir / "ra3d.lock").exists()
    rows = metrics_rows(run_dir)
    assert [int(r["step"]) for r in rows] == list(range(8))
    for got, want in zip(rows, expected, strict=True):
        assert float(got["train/loss"]) == pytest.approx(float(want["train/loss"]), rel=1e-6)


# ------------------------------------------------------------------ signals and kill -9
def _child(argv: list[str], log: str, stall_second_save: bool) -> None:
    """A ``ra3d`` process: its stdout and stderr go to ``log``. With ``stall_second_save`` the
    second checkpoint save stops between writing ``last.ckpt.tmp`` and renaming it."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    if stall_second_save:
        import ra3d.training.callbacks as callbacks

        fsync = callbacks._fsync_file

        def slow_fsync(path: Path) -> None:
            fsync(path)
            if path.with_name("last.ckpt").exists():  # the first save went through
                print("SAVE WRITTEN, NOT RENAMED", flush=True)
                time.sleep(600)

        callbacks._fsync_file = slow_fsync
    sys.exit(main(argv))


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    """Three real ``ra3d fit`` processes: one gets SIGTERM and one SIGINT after step 3 (its
    validation line), one is killed with SIGKILL while a checkpoint is written but not yet
    renamed. They are forked from a server that imported torch and Lightning once (three fresh
    interpreters cost ~3x the import time on a loaded machine). Returns, per case, the exit code,
    the output and the folder."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["ra3d.cli", "ra3d.training.system", "tests.toys", "lightning.pytorch"]
    )
    cases = {
        "SIGTERM": (signal.SIGTERM, "wrote validation orbit"),
        "SIGINT": (signal.SIGINT, "wrote validation orbit"),
        "SIGKILL": (signal.SIGKILL, "SAVE WRITTEN, NOT RENAMED"),
    }
    results: dict[str, tuple[int, str, Path]] = {}
    for name, (signum, trigger) in cases.items():
        tmp = tmp_path_factory.mktemp(name)
        config = toy_config(tmp, **{"trainer.max_steps": 100000,
                                    "trainer.val_check_interval": 3})  # fmt: skip
        log = tmp / "log.txt"
        log.write_text("")
        argv = ["fit", "--config", str(config)]
        proc = ctx.Process(target=_child, args=(argv, str(log), name == "SIGKILL"))
        proc.start()
        deadline = time.monotonic() + 300
        while trigger not in log.read_text():
            assert proc.is_alive(), log.read_text()  # nothing may end before its signal
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signum)
        proc.join(timeout=120)
        assert proc.exitcode is not None, log.read_text()
        results[name] = (proc.exitcode, log.read_text(), tmp)
    return results


@pytest.mark.parametrize(("name", "code", "word"), [("SIGTERM", 143, "SIGTERM"),
                                                    ("SIGINT", 130, "Ctrl-C")])  # fmt: skip
def test_signal_saves_the_latest_step_and_exits_128_plus_signum(
    stopped_runs: dict[str, tuple[int, str, Path]], name: str, code: int, word: str
) -> None:
    exit_code, out, tmp = stopped_runs[name]
    assert exit_code == code, out
    assert f"stopped by {word}; saved" in out and "Traceback" not in out
    ckpt = tmp / "out" / "toy" / "version_0" / "checkpoints" / "last.ckpt"
    record, state, _ = read_checkpoint(ckpt)
    step = int(out.split("saved checkpoint ")[-1].split("(step ")[1].split(")")[0])
    assert record.global_step == step >= 3  # the step it stopped at, not a periodic save
    assert all(bool(v.isfinite().all()) for v in state.values())
    assert not (ckpt.parent.parent / "ra3d.lock").exists()


def test_kill_9_during_a_save_keeps_the_old_checkpoint_and_the_next_run_cleans_up(
    stopped_runs: dict[str, tuple[int, str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code, out, tmp = stopped_runs["SIGKILL"]
    assert exit_code == -signal.SIGKILL, out
    ckpt_dir = tmp / "out" / "toy" / "version_0" / "checkpoints"
    assert (ckpt_dir / "last.ckpt.tmp").is_file()
    record, _, _ = read_checkpoint(ckpt_dir / "last.ckpt")
    assert record.global_step == 2  # the first periodic save, intact
    assert (ckpt_dir.parent / "ra3d.lock").is_file()  # left by the killed run

    config = tmp / "toy.yaml"
    code, out = run(capsys, "fit", "--config", str(config), "--trainer.max_steps", "4",
                    "--ckpt_path", str(ckpt_dir / "last.ckpt"))  # fmt: skip
    assert code == 0, out
    assert "no longer running" in out and "Traceback" not in out  # stale lock taken over
    assert not (ckpt_dir / "last.ckpt.tmp").exists()
    assert read_checkpoint(ckpt_dir / "last.ckpt")[0].global_step == 4


# ------------------------------------------------------------------ database import
def test_damaged_sh3f_member_is_one_error_and_leaves_no_folder(tmp_path: Path) -> None:
    from ra3d.retrieval.database import DatabaseError
    from tests.retrieval.test_database import build_sh3f

    archive = build_sh3f(tmp_path / "cat.sh3f")
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("test/phone.obj")
    data = bytearray(archive.read_bytes())
    start_of_data = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start_of_data + 5] ^= 0xFF  # the index stays intact; the member's bytes do not
    archive.write_bytes(bytes(data))
    out = tmp_path / "db"
    with pytest.raises(DatabaseError, match="is damaged.*phone.obj.*download the catalog again"):
        import_sh3f(archive, out)
    assert not out.exists()


DB_CASES = {
    "binary captions CSV": (["db", "import", "folder", "{tmp}/meshes", "--captions",
                             "{tmp}/binary.csv", "--db", "{tmp}/db"], "is not UTF-8 text"),
    "binary Cap3D CSV": (["db", "import", "objaverse", "--cap3d", "{tmp}/binary.csv", "--limit",
                          "1", "--db", "{tmp}/db"], "is not UTF-8 text"),
    "captions CSV is a directory": (["db", "import", "folder", "{tmp}/meshes", "--captions",
                                     "{tmp}/meshes", "--db", "{tmp}/db"], "is a directory"),
    "catalog is a directory": (["db", "import", "sh3f", "{tmp}/meshes", "--db", "{tmp}/db"],
                               "is a directory"),
    "no download processes": (["db", "import", "objaverse", "--cap3d", "{tmp}/binary.csv",
                               "--limit", "1", "--processes", "0", "--db", "{tmp}/db"],
                              "--processes must be >= 1"),
    "too many views": (["retrieve", "a bear", "--views", "100000"], "--views must be in [2, 360]"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DB_CASES))
def test_database_and_retrieval_bad_inputs(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "meshes").mkdir()
    (tmp_path / "binary.csv").write_bytes(bytes(range(128, 256)) * 8)
    argv, expected = DB_CASES[case]
    code, out = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert code == 2, out
    assert expected in out and "Traceback" not in out
    assert not (tmp_path / "db").exists()  # no empty database folder left behind


# ------------------------------------------------------------------ retrieval and prior messages
def test_retrieve_refuses_an_empty_query_and_says_when_k_exceeds_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.retrieval.test_retrieval import make_db

    code, out = run(capsys, "retrieve", "  ")
    assert code == 2 and "the prompt is empty" in out and "Traceback" not in out

    monkeypatch.setenv("RA3D_CACHE_DIR", str(tmp_path / "cache"))
    db = tmp_path / "db"
    make_db(db, [("bear", "a teddy bear", 0.0, "red", "blue"),
                 ("chair", "a wooden chair", 0.0, "red", "blue")])  # fmt: skip
    code = main(["retrieve", "a teddy bear", "-k", "100000", "--db", str(db),
                 "--embedder", "minilm", "--no-rerank", "--no-align", "--json"])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert [r["uid"] for r in json.loads(captured.out)] == ["bear", "chair"]
    assert "-k 100000 asked for more assets than the database holds: it has 2" in captured.err


def test_prompt_over_the_text_encoder_limit_is_announced(
    tiny_prior_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from ra3d.guidance.prior import DiffusionPrior

    prior = DiffusionPrior(str(tiny_prior_path), device="cpu")
    limit = prior.tokenizer.model_max_length
    long_prompt = " ".join(["teddy"] * 100)
    n_tokens = len(prior.tokenizer(long_prompt, truncation=False).input_ids)  # the full encoding
    assert n_tokens > limit
    log = logging.getLogger("ra3d.guidance.prior")  # the CLI may have stopped propagation
    log.addHandler(caplog.handler)
    try:
        prior.encode_text(["a teddy bear"])
        assert "tokens long" not in caplog.text  # a short prompt passes silently
        prior.encode_text([long_prompt])
    finally:
        log.removeHandler(caplog.handler)
    assert f"is {n_tokens} tokens long but the text encoder reads only the first {limit}" in (
        caplog.text
    )


# ------------------------------------------------------------------ progress bar
def test_progress_bar_counts_steps_and_shows_loss_and_seconds_per_step(tmp_path: Path) -> None:
    from ra3d.training.progress import StepProgressBar

    bar = StepProgressBar()
    trainer = pl.Trainer(max_steps=5, accelerator="cpu", default_root_dir=tmp_path,
                         enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=0, callbacks=[bar])  # fmt: skip
    trainer.fit(make_system({"guidance": 1.0}), RandomCameraDataModule(height=4, width=4))
    tqdm_bar = bar.train_progress_bar
    assert (tqdm_bar.n, tqdm_bar.total) == (5, 5)  # "step 5/5", not "Epoch 0: 5/-2"
    assert tqdm_bar.desc.startswith("step")
    shown = bar.get_metrics(trainer, trainer.lightning_module)
    assert "v_num" not in shown and "loss" in shown and float(shown["s/step"]) > 0
    assert shown["loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]))


def test_nested_stop_installations_restore_the_handlers_of_before() -> None:
    """A command run from inside another (the chain's stages) must not leave SIGINT routed to
    ra3d once the outer command returns."""
    from ra3d.training.signals import STOP

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with STOP.installed():
        assert signal.getsignal(signal.SIGINT) == STOP.handle
        with STOP.installed():
            assert signal.getsignal(signal.SIGTERM) == STOP.handle
        assert signal.getsignal(signal.SIGINT) == STOP.handle  # the outer one still holds
    assert {s: signal.getsignal(s) for s in before} == before

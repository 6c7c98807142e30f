"""Publication as one set under kills, moves, copies, paused writers and read-only folders: a journal
belongs to its folder and its writer, and finished work is never thrown away."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferdata.cli import app
from ferdata.core.io import read_table

RUN = CliRunner()
JOURNALS = ".ferdata-*.journal.json"


def child(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    start = time.time()
    while not marker.exists():
        assert proc.poll() is None, "the child ended before it reached the marker"
        assert time.time() - start < timeout
        time.sleep(0.02)


def align_paused(data_dir: Path, marker: Path, *, after: int, seconds: float) -> str:
    """A child script: align whose publication stops for ``seconds`` after ``after`` of its moves."""
    return f"""
        import time
        import ferdata.core.publish as pub
        real, moves = pub._move, []
        def move(src, dst, old):
            if len(moves) == {after}:
                open({str(marker)!r}, "w").close()
                time.sleep({seconds})
            moves.append(dst)
            real(src, dst, old)
        pub._move = move
        import ferdata.align as mod
        mod.align({str(data_dir)!r}, workers=1)
    """


def killed_mid_publication(data_dir: Path) -> None:
    """Leave ``data_dir`` as align killed after the first move of its publication leaves it."""
    shutil.rmtree(data_dir / "aligned")
    (data_dir / "aligned.parquet").unlink()
    marker = data_dir.parent / f"{data_dir.name}.paused"
    proc = child(align_paused(data_dir, marker, after=1, seconds=120))
    wait_for(marker, proc)
    proc.kill()
    proc.wait()
    marker.unlink()
    assert list(data_dir.glob(JOURNALS))


def aligned_whole(data_dir: Path) -> bool:
    table, _ = read_table(data_dir / "aligned.parquet", "aligned")
    faces = list((data_dir / "aligned").glob("*.jpg"))
    return len(table) == 48 and len(faces) == 48 and not list(data_dir.glob(JOURNALS))


def test_align_killed_just_before_publication_resumes_without_aligning_again(data_dir, monkeypatch):
    """Every chunk is done and the faces are in the work folder when the kill comes: the next run
    publishes them as they are (before, the hand-over had moved them into a staging folder that the
    next run cleared as a leftover, so all the work was lost)."""
    import ferdata.align as mod

    shutil.rmtree(data_dir / "aligned")
    (data_dir / "aligned.parquet").unlink()
    marker = data_dir / "publishing"
    proc = child(f"""
        import time
        import ferdata.core.stage as stage
        def publish(*args, **kwargs):
            open({str(marker)!r}, "w").close()
            time.sleep(120)
        stage.publish = publish
        import ferdata.align as mod
        mod.align({str(data_dir)!r}, workers=1)
    """)
    wait_for(marker, proc)
    proc.kill()
    proc.wait()
    marker.unlink()

    def never(*args, **kwargs):
        raise AssertionError("a face was aligned again")

    monkeypatch.setattr(mod, "_align_one", never)
    mod.align(data_dir, workers=1)
    assert aligned_whole(data_dir) and not (data_dir / ".align-work").exists()


def test_a_moved_or_copied_folder_completes_its_own_pending_publication(data_dir, tmp_path):
    killed_mid_publication(data_dir)
    copy, moved = tmp_path / "copy", tmp_path / "moved"
    shutil.copytree(data_dir, copy, symlinks=True)
    data_dir.rename(moved)
    assert RUN.invoke(app, ["shard", "--data", str(copy)]).exit_code == 0
    assert aligned_whole(copy)
    assert list(moved.glob(JOURNALS)) and not data_dir.exists()  # the copy touched nothing outside it
    assert RUN.invoke(app, ["shard", "--data", str(moved)]).exit_code == 0
    assert aligned_whole(moved)


def test_a_reader_waits_for_a_paused_writer_instead_of_completing_its_journal(data_dir, tmp_path):
    """Align pauses mid-publication, lock held; a process that only reads the folder (train, into its
    own models folder) waits for it rather than completing align's journal under it."""
    from ferdata.train.loop import STAGE as TRAIN

    shutil.rmtree(data_dir / "aligned")
    (data_dir / "aligned.parquet").unlink()
    marker = tmp_path / "paused"
    writer = child(align_paused(data_dir, marker, after=1, seconds=3))
    wait_for(marker, writer)
    with TRAIN.start(data=data_dir, models=tmp_path / "models"):
        assert aligned_whole(data_dir)  # it waited until the writer had published
    assert writer.wait(60) == 0  # the writer finished its own publication


def test_two_trainings_on_one_data_folder_keep_their_publications_apart(data_dir, tmp_path):
    """Two runs of train on one data folder with different models folders, both paused mid-publication:
    each completes its own (a journal shared in the data folder made one of them die), and the data
    folder, which they only read, gains nothing."""
    seen = sorted(p.name for p in data_dir.iterdir())
    procs = []
    for name in ("m1", "m2"):
        marker = tmp_path / f"{name}.paused"
        procs.append(
            child(f"""
            import time
            import ferdata.core.publish as pub
            real = pub._move
            def move(src, dst, old):
                open({str(marker)!r}, "w").close()
                time.sleep(2)
                real(src, dst, old)
            pub._move = move
            from pathlib import Path
            from ferdata.train.loop import STAGE
            with STAGE.start(data=Path({str(data_dir)!r}), models=Path({str(tmp_path / name)!r})) as run:
                run.output("train_log").write_text({name!r})
        """)
        )
        wait_for(marker, procs[-1])
    assert [p.wait(60) for p in procs] == [0, 0]
    for name in ("m1", "m2"):
        assert (tmp_path / name / "train_log.json").read_text() == name
        assert not list((tmp_path / name).glob(JOURNALS))
    assert sorted(p.name for p in data_dir.iterdir()) == seen


def test_a_damaged_or_hostile_journal_is_one_line_and_moves_nothing(data_dir, tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    journal = data_dir / ".ferdata-noise-0123.journal.json"
    journal.write_text(json.dumps({"moves": [["../precious.txt", "stolen.txt"]], "remove": []}))
    result = RUN.invoke(app, ["noise", "--data", str(data_dir)])
    assert result.exit_code == 1 and "outside its folder" in result.output and str(journal) in result.output
    assert outside.read_text() == "keep me" and not (data_dir / "stolen.txt").exists()
    journal.write_text("{not json")
    result = RUN.invoke(app, ["noise", "--data", str(data_dir)])
    assert result.exit_code == 1 and "is damaged" in result.output and "Traceback" not in result.output
    journal.unlink()
    assert RUN.invoke(app, ["noise", "--data", str(data_dir)]).exit_code == 0


@pytest.fixture
def read_only():
    """Make a folder read-only (a read-only bind mount for root, whom file modes do not stop)."""
    mounted: list[Path] = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            return
        for argv in (["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,bind,ro", str(folder)]):
            if subprocess.run(argv, capture_output=True).returncode:
                pytest.skip("cannot bind-mount a folder read-only here: the read-only case is untested")
            mounted.append(folder)

    yield make
    for folder in mounted[:1]:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_train_on_a_read_only_data_folder_writes_only_its_models(trained_dir, tmp_path, read_only):
    data = tmp_path / "ro"
    shutil.copytree(trained_dir, data, ignore=shutil.ignore_patterns("models"))
    read_only(data)
    argv = ["train", "--data", str(data), "--models", str(tmp_path / "m"), "--epochs", "1", "--batch-size", "8"]
    result = RUN.invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "model.pt").is_file()
    result = RUN.invoke(app, ["noise", "--data", str(data)])  # a writer gets one line naming the fix
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "read-only" in lines[0], result.output


def test_a_read_only_folder_with_a_pending_publication_says_what_to_do(data_dir, tmp_path, read_only):
    from ferdata.core.errors import FerdataError
    from ferdata.train.loop import STAGE as TRAIN

    killed_mid_publication(data_dir)
    read_only(data_dir)
    with pytest.raises(FerdataError, match="left half published, and it is not writable: make it writable"):
        with TRAIN.start(data=data_dir, models=tmp_path / "models"):
            pass


def test_a_fork_of_a_folder_left_mid_publication_completes_it_first(data_dir, tmp_path):
    killed_mid_publication(data_dir)
    result = RUN.invoke(app, ["fork", "--data", str(data_dir), "--to", str(tmp_path / "variant")])
    assert result.exit_code == 0, result.output
    assert aligned_whole(data_dir)  # the base is whole before anything reads it through the fork
    assert RUN.invoke(app, ["noise", "--data", str(tmp_path / "variant")]).exit_code == 0

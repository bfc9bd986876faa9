"""``model.pretrained_file`` through ``bench run``: a bad file refuses the study before training."""

from helpers import write_study


def test_bench_run_refuses_a_bad_file_before_training(tmp_path, monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "s.yaml", {"base.model.pretrained_file": "weights/absent.safetensors"})
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bench: error: weights/absent.safetensors: model.pretrained_file not found"
    assert not (tmp_path / "mlflow.db").exists()


def test_bench_run_refuses_a_text_file_and_a_directory(tmp_path, monkeypatch, capsys):
    """A text file named .pth was a `KeyError: 101` traceback (exit 1); a directory was "not found"."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.pth").write_text("epochs: 2\nthese are notes, not weights\n")
    (tmp_path / "weights.pth").mkdir()
    for name, message in (
        ("notes.pth", "notes.pth: not a readable state dict ("),
        ("weights.pth", "weights.pth: model.pretrained_file is a directory, not a weights file"),
    ):
        study = write_study(tmp_path / "s.yaml", {"base.model.pretrained_file": name})
        assert main(["run", str(study)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"bench: error: {name}") and message in err, err
    assert not (tmp_path / "mlflow.db").exists()

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

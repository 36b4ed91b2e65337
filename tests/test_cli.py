import json
import subprocess
import sys

from automtl.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "automtl", *args], capture_output=True, text=True, env=env)


def test_problems_lists_tasks(capsys):
    assert main(["problems", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["multidigits"]["tasks"] == ["left", "right"]
    assert listing["mnist1d-pair"]["tasks"] == ["first", "second"]
    assert "multimnist" in listing


def test_strategies_lists_every_strategy_with_its_threshold_range_and_scale(capsys):
    assert main(["strategies", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert sorted(listing) == ["activation", "clustering", "entropy", "global_magnitude", "magnitude",
                               "random", "sparse_opt", "stability", "taylor"]
    for row in listing.values():
        assert row["low"] < row["high"] and row["meaning"] and row["threshold"]
    assert listing["activation"]["structured"] and not listing["magnitude"]["structured"]
    calibrated = sorted(name for name, row in listing.items() if row["calibrated"])
    assert calibrated == ["global_magnitude", "random", "stability", "taylor"]


def test_train_prints_per_task_metrics_and_reuses_cache(tmp_path, capsys):
    args = ["train", "multidigits", "-o", "train_pairs=500", "-o", "eval_pairs=100",
            "--hidden", "32", "--epochs", "2", "--cache-dir", str(tmp_path), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert set(first["metrics"]) == {"left", "right"} and not first["cached"]
    assert first["model"]["hidden"] == [32]
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cached"] and second["metrics"] == first["metrics"]
    assert main(args[:-1]) == 0
    assert f"`dense: {{weights: {first['checkpoint']}}}`" in capsys.readouterr().out.replace("\n", "")


def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path):
    cache = tmp_path / "cache"
    for args, message in [
        (["train", "nosuch"], "problem 'nosuch' is unknown"),
        (["train", "multidigits", "-o", "off=0"], "'off' must be an integer in [1, 8]"),
        (["train", "multidigits", "--arch", "rnn"], "model.arch 'rnn' is unknown"),
        (["train", "multidigits", "--epochs", "0"], "--epochs must be >= 1"),
        (["train", "multimnist", "-o", f"root={tmp_path / 'mnist'}"], "does not exist"),
    ]:
        result = run_cli(*args, "--cache-dir", str(cache))
        assert result.returncode == 2, result.stderr
        assert message in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr
    assert not cache.exists()


def test_bad_search_input_exits_2_before_anything_is_written(tmp_path):
    smoke = "search_spaces/smoke.yaml"
    for overrides, message in [
        (["--set", "problem.name=nosuch"], "problem 'nosuch' is unknown"),
        (["--set", "pruning.strategies.prune_more=null"], "strategy 'prune_more' is unknown; allowed"),
        (["--set", "loss_weights.method=fixed", "--set", "loss_weights.weights={left: 1, centre: 1}"],
         "names tasks ['centre', 'left']; the problem 'multidigits' has tasks ['left', 'right']"),
        (["--set", "problem.options.off=12"], "'off' must be an integer in [1, 8]"),
        (["--set", "model.arch=cnn", "--set", "model.channels=[0]"], "model.channels.0"),
        (["--trials", "0"], "trials: Input should be greater than 0"),
    ]:
        run_dir = tmp_path / "run"
        result = run_cli("search", smoke, "--run-dir", str(run_dir), *overrides)
        assert result.returncode == 2, result.stderr
        assert message in " ".join(result.stderr.split()), result.stderr
        assert "Traceback" not in result.stderr
        assert not run_dir.exists(), "nothing may be written on bad input"
    missing = run_cli("status", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "not an automtl run directory" in missing.stderr

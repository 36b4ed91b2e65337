"""A model trained outside automtl, handed over as weights (a file or a module), is the dense reference."""

import json

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import yaml

import automtl
from automtl import checkpoints, evaluate
from automtl.dense import REFERENCE, read_state
from automtl.errors import UserError
from automtl.exporting import export
from automtl.rundir import RunDir
from tests.fixtures.zoo import UserResNet, resnet_digits, search_space
from tests.test_search import cli

OPTIONS = {"train_pairs": 1200, "eval_pairs": 300}
FIELDS = dict(
    name="given", seed=0, fine_tune={"epochs": 1, "optimizer": {"name": "sgd", "momentum": 0.9}, "lr": 0.01},
    pruning={"strategies": {"magnitude": {"low": 0.2, "high": 0.6}, "activation": {"low": 0.2, "high": 0.6}},
             "calibration_size": 128},
    loss_weights={"method": "simplex"}, sampler={"name": "random"}, tracking={"enabled": False}, trials=3,
)


def train_outside(problem, seed=1, width=12):
    """A plain PyTorch training loop, nothing of automtl: SGD with momentum, two epochs."""
    torch.manual_seed(seed)
    model = UserResNet(problem, width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    inputs, targets = problem.train.inputs, problem.train.targets
    for _ in range(2):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 64):
            batch = order[start:start + 64]
            outputs = model(inputs[batch])
            loss = sum(F.cross_entropy(outputs[t], targets[t][batch]) for t in problem.task_names)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The problem, a model trained on it outside automtl saved as .pt and .safetensors, and its metrics."""
    folder = tmp_path_factory.mktemp("outside")
    problem = resnet_digits(**OPTIONS, seed=0)
    model = train_outside(problem)
    torch.save(model.state_dict(), folder / "model.pt")
    safetensors.torch.save_file(model.state_dict(), folder / "model.safetensors")
    metrics = {split: evaluate(model, problem, getattr(problem, split)) for split in ("val", "test")}
    return folder, problem, model, metrics


def _space(folder, **dense):
    path = folder / f"space-{len(list(folder.glob('space-*')))}.yaml"
    path.write_text(search_space("resnet_digits", OPTIONS, **FIELDS, dense=dense))
    return path


@pytest.mark.parametrize("weights", ["model.pt", "model.safetensors"])
def test_given_weights_are_the_dense_reference_and_every_pareto_trial_exports_exactly(outside, tmp_path, weights):
    folder, problem, model, metrics = outside
    run_dir = tmp_path / "run"
    cli("search", _space(folder, weights=weights), "--run-dir", run_dir, "--json")
    study = RunDir(run_dir).load_study()
    attrs = study.user_attrs
    assert attrs["dense_val_metrics"] == metrics["val"] and attrs["dense_test_metrics"] == metrics["test"]
    reference = attrs["dense_reference"]
    assert reference["source"] == "weights" and reference["path"] == str(folder / weights)
    assert reference["digest"] == checkpoints.digest(model.state_dict(), "")
    assert not list((run_dir / "dense").glob("dense-*.pt")), "no dense model was trained"
    for trial in automtl.front(run_dir):
        card = export(run_dir, tmp_path / f"export-{trial.number}", trial=trial.number,
                      formats=["onnx", "safetensors"]).card
        assert card["shrunk_vs_trial_max_abs_diff"] <= 1e-4
        assert card["dense_reference"] == reference and card["test_metrics"]["dense"] == metrics["test"]
        assert card["test_metrics"]["exported_onnx"] == pytest.approx(trial.result.test_metrics, abs=1e-3)


def test_a_trained_module_passed_to_search_is_the_reference_and_resume_refuses_other_weights(outside, tmp_path):
    folder, problem, model, metrics = outside
    config = yaml.safe_load(search_space("resnet_digits", OPTIONS, **FIELDS))
    run_dir = tmp_path / "run"
    summary = automtl.search(config, problem, run_dir, model=model)
    assert summary.dense_metrics == metrics["test"]
    other = train_outside(problem, seed=2)
    with pytest.raises(UserError, match="differ from those .* was started with"):
        automtl.search({**config, "trials": 4}, problem, run_dir, resume=True, model=other)
    resumed = automtl.search({**config, "trials": 4}, problem, run_dir, resume=True)  # the kept copy
    assert resumed.status["counts"]["complete"] == 4 and resumed.dense_metrics == metrics["test"]
    assert (run_dir / REFERENCE).exists()


def test_the_factory_model_as_it_is_with_train_false(outside, tmp_path):
    folder, problem, _, _ = outside
    config = yaml.safe_load(search_space("resnet_digits", OPTIONS, **{**FIELDS, "trials": 1}, dense={"train": False}))
    summary = automtl.search(config, problem, tmp_path / "run")
    torch.manual_seed(0)  # the config's seed, as the factory model is built
    assert summary.dense_metrics == evaluate(UserResNet(problem), problem, problem.test)


def _bad_files(folder, problem, model):
    state = model.state_dict()
    renamed = {k.replace("conv1.", "convA."): v for k, v in state.items()}
    torch.save(renamed, folder / "renamed.pt")
    torch.save(UserResNet(problem, width=8).state_dict(), folder / "narrow.pt")
    torch.save(model, folder / "module.pt")
    torch.save([1, 2, 3], folder / "list.pt")
    (folder / "garbage.safetensors").write_bytes(b"not a safetensors file")
    (folder / "weights.h5").write_bytes(b"")


BAD_WEIGHTS = {
    "renamed.pt": ["missing keys ['conv1.weight'", "unexpected keys ['convA.weight'"],
    "narrow.pt": ["shape mismatch stem.weight: expected [12, 1, 3, 3], found [8, 1, 3, 3]"],
    "module.pt": ["weights_only=True", "torch.save(model.state_dict()"],
    "list.pt": ["holds a list, not a state dict"],
    "garbage.safetensors": ["not a readable safetensors file"],
    "missing.pt": ["does not exist"],
    "weights.h5": ["unknown file type '.h5'; allowed: .pt, .pth, .safetensors"],
}


@pytest.mark.parametrize("weights", sorted(BAD_WEIGHTS))
def test_bad_weights_exit_2_naming_what_is_wrong_and_write_nothing(outside, tmp_path, weights):
    folder, problem, model, _ = outside
    if not (folder / "renamed.pt").exists():
        _bad_files(folder, problem, model)
    result = cli("search", _space(folder, weights=weights), "--run-dir", tmp_path / "run", check=False)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert all(part in message for part in BAD_WEIGHTS[weights]), message
    assert not (tmp_path / "run").exists()


def test_resume_with_other_weights_is_refused_before_anything_changes(outside, tmp_path):
    folder, problem, model, _ = outside
    torch.save(train_outside(problem, seed=3).state_dict(), folder / "other.pt")
    run_dir = tmp_path / "run"
    cli("search", _space(folder, weights="model.pt"), "--run-dir", run_dir, "--trials", 1)
    before = (run_dir / "study.journal").read_bytes()
    result = cli("search", _space(folder, weights="other.pt"), "--run-dir", run_dir, "--resume", "--trials", 2,
                 check=False)
    assert result.returncode == 2 and "differ from those" in result.stderr
    assert (run_dir / "study.journal").read_bytes() == before


def test_automtl_train_writes_a_checkpoint_dense_weights_reads(tmp_path):
    result = cli("train", "multidigits", "--option", "train_pairs=300", "--option", "eval_pairs=100", "--epochs", 1,
                 "--cache-dir", tmp_path, "--json")
    checkpoint = json.loads(result.stdout)["checkpoint"]
    state = read_state(checkpoint)
    problem = automtl.get_problem("multidigits", train_pairs=300, eval_pairs=100)
    problem.build_model().load_state_dict(state)

"""The Python API: a search on an in-memory Problem, export from it, the compact sparse weights, and every
docstring example of the package (run as doctests against that search)."""

import dataclasses
import doctest
import importlib
import pkgutil

import pytest
import torch

import automtl
from automtl import exporting, formats
from automtl.errors import UserError
from automtl.formats import Exported
from automtl.rundir import RunDir
from tests.fixtures.zoo import ZOO

CONFIG = {
    "dense": {"epochs": 3},
    "fine_tune": {"epochs": 1},
    "pruning": {"strategies": {"global_magnitude": None, "magnitude": {"low": 0.0, "high": 0.3}}},
    "seed_front": [0.95],  # trial 0: global magnitude at 95 %
    "trials": 4,
    "workers": 1,
    "tracking": {"enabled": False},
    "keep_weights": "all",  # trial 0 is exported by number
}


@pytest.fixture(scope="module")
def problem():
    return automtl.get_problem("multidigits", train_pairs=800, eval_pairs=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, problem):
    path = tmp_path_factory.mktemp("api") / "in-memory"
    summary = automtl.search(CONFIG, problem, run_dir=path)
    assert summary.status["counts"]["complete"] == 4
    return str(path)


def test_a_search_on_an_in_memory_problem_records_it_by_name_and_resumes_with_it(run_dir, problem):
    assert RunDir(run_dir).load_config().problem.name == "in-memory:multidigits"
    summary = automtl.search(CONFIG, problem, run_dir=run_dir, overrides=["trials=5"], resume=True)
    assert summary.status["counts"]["complete"] == 5
    records = automtl.front(run_dir)
    assert records and all(isinstance(r, automtl.TrialRecord) and r.complete for r in records)
    assert [r.number for r in records] == sorted(r.number for r in records)
    assert automtl.load_study(run_dir).user_attrs["tasks"] == ["left", "right"]


def test_without_its_problem_object_such_a_run_cannot_be_rebuilt_and_says_so(run_dir, tmp_path):
    with pytest.raises(UserError, match="passed to automtl.search as a Problem object"):
        automtl.export(run_dir, tmp_path / "out", trial=0, formats=["safetensors"])
    assert not (tmp_path / "out").exists()


class _Pairs(torch.utils.data.Dataset):
    """A split read item by item, as a larger-than-memory Dataset would be."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return self.split.inputs[i], {task: values[i] for task, values in self.split.targets.items()}


def test_a_dataset_problem_object_is_refused_where_workers_cannot_receive_it(tmp_path, problem):
    on_datasets = dataclasses.replace(problem, train=_Pairs(problem.train))
    assert not on_datasets.in_memory
    with pytest.raises(UserError, match="cannot receive as an object"):
        automtl.search({**CONFIG, "backend": {"name": "ray"}}, on_datasets, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_the_sparse_artifact_meets_its_size_bound_and_restores_the_exported_model(run_dir, problem, tmp_path):
    result = automtl.export(run_dir, tmp_path / "t0", trial=0, formats=["sparse", "safetensors"], problem=problem)
    card = result.card
    assert card["sparsity"] >= 0.9
    sparse = card["sparse_weights"]
    assert sparse["bytes"] == card["files"]["sparse"]["bytes"] <= 1.2 * sparse["nonzero_bound_bytes"]
    assert "no:" in sparse["faster"]
    model = automtl.load_pruned(result.out_dir, problem)
    exported, _ = exporting.load_trial_model(RunDir(run_dir), automtl.load_study(run_dir).trials[0], problem)
    exporting.shrink_exactly(exported, problem)
    inputs = problem.test.inputs
    with torch.no_grad():
        got, expected = model(inputs), exported(inputs)
    for task in problem.task_names:
        assert torch.equal(got[task], expected[task])


@pytest.mark.parametrize("name", sorted(ZOO))
def test_load_pruned_reproduces_every_zoo_model_exactly_after_shrinking(zoo, name, tmp_path):
    problem, trained = zoo(name)
    model = _pruned_copy(trained)
    exporting.shrink_exactly(model, problem)
    factory = ZOO[name][2]
    rebuildable = dataclasses.replace(problem, model_factory=lambda spec: factory(problem))
    sample = problem.test.inputs[:64]
    written = formats.write("sparse", Exported(model, trained, problem, sample, 256, {"model": {}}), tmp_path)
    assert written.files == {"sparse": "model.sparse.safetensors"}
    loaded = automtl.load_pruned(tmp_path, rebuildable)
    with torch.no_grad():
        got, expected = loaded(problem.test.inputs), model.eval()(problem.test.inputs)
    for task in problem.task_names:
        assert torch.equal(automtl.models.task_outputs(got, problem.task_names)[task],
                           automtl.models.task_outputs(expected, problem.task_names)[task]), task


def _pruned_copy(trained: torch.nn.Module) -> torch.nn.Module:
    """90 % of the weights zeroed by global magnitude, and a quarter of the first layer's units emptied (so
    shrinking removes whole units and load_pruned must resize layers)."""
    import copy

    from torch.nn.utils import prune

    model = copy.deepcopy(trained).eval()
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d,
                                                                          torch.nn.Conv2d))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.9)
    for module, _ in layers:
        prune.remove(module, "weight")
    first = layers[0][0]
    with torch.no_grad():
        first.weight[: first.weight.shape[0] // 4] = 0
        if first.bias is not None:
            first.bias[: first.weight.shape[0] // 4] = 0
    return model


def test_a_file_that_is_not_a_sparse_export_is_refused_clearly(tmp_path):
    (tmp_path / "model.sparse.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="is not a safetensors file"):
        automtl.load_pruned(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        automtl.load_pruned(tmp_path / "missing")


def test_the_export_formats_come_from_one_registry(tmp_path):
    from automtl import cli

    parser = cli.build_parser()
    export = parser._subparsers._group_actions[0].choices["export"]
    default = next(a for a in export._actions if a.dest == "format").default
    assert default.split(",") == list(formats.WRITERS) == list(exporting.FORMATS)


def _doctests(module_names):
    finder = doctest.DocTestFinder()
    for name in module_names:
        yield from (test for test in finder.find(importlib.import_module(name)) if test.examples)


MODULES = sorted(m.name for m in pkgutil.walk_packages(automtl.__path__, "automtl.")
                 if not m.name.startswith("automtl.backends.ray") and m.name != "automtl.__main__")


def test_every_docstring_example_runs(run_dir, problem):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    ran = 0
    for test in _doctests(MODULES):
        test.globs.update(run_dir=run_dir, problem=problem)
        runner.run(test)
        ran += 1
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} docstring examples failed (see above)"
    assert ran >= 5 and results.attempted >= 15

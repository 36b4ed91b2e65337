"""Splits served as map-style Datasets: the same training, pruning, evaluation and search as tensors."""

import copy
import pickle

import pytest
import torch
from optuna.trial import TrialState
from torch.utils.data import IterableDataset

from automtl import DatasetSplit, ModelSpec, Problem, Split, UserError, get_problem
from automtl.config import load
from automtl.problems import ProblemError
from automtl.pruning import PruneContext, apply
from automtl.rundir import RunDir
from automtl.space import TrialPlan
from automtl.train import Distillation, Teacher, TrainConfig, evaluate, fit
from automtl.trial import Bench
from tests.conftest import FIXTURES
from tests.test_ray import RAY
from tests.test_search import SMOKE, cli

FORMS = ("dicts", "tuples")
SPEC = ModelSpec("mlp", (32, 16))
PLAN = [("magnitude", 0.3), ("activation", 0.3), ("taylor", 0.2)]


@pytest.fixture(scope="module")
def served():
    """The fixture module, and the same problem as tensors and as Datasets of both item forms."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(FIXTURES))
        import dataset_problem
    return dataset_problem, {form: dataset_problem.make(form) for form in ("tensors", *FORMS)}


def _trained(problem: Problem) -> torch.nn.Module:
    torch.manual_seed(0)
    model = problem.build_model(SPEC)
    fit(model, problem, TrainConfig(epochs=2, batch_size=64), seed=0)
    return model


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("form", FORMS)
def test_a_dataset_split_serves_the_same_batches_and_samples(served, form):
    _, problems = served
    tensors, dataset = problems["tensors"].train, problems[form].train
    assert isinstance(dataset, DatasetSplit) and len(dataset) == len(tensors)
    for seed in (None, 3):  # in order, and shuffled by equally seeded generators
        for (x, y), (u, v) in zip(tensors.batches(100, _generator(seed)), dataset.batches(100, _generator(seed)),
                                  strict=True):
            assert torch.equal(x, u) and _same(y, v)
        a, b = tensors.sample(70, _generator(seed)), dataset.sample(70, _generator(seed))
        assert torch.equal(a.inputs, b.inputs) and _same(a.targets, b.targets)
    assert problems[form].input_shape == problems["tensors"].input_shape


def test_reading_a_dataset_leaves_the_global_random_state_alone(served):
    _, problems = served
    draws = []
    for form in ("tensors", "dicts"):
        torch.manual_seed(0)
        list(problems[form].train.batches(64, torch.Generator().manual_seed(1)))
        problems[form].train.sample(10)
        draws.append(torch.rand(3))
    assert torch.equal(*draws)


@pytest.mark.parametrize("form", FORMS)
def test_datasets_give_the_same_training_pruning_and_evaluation_as_tensors(served, form):
    _, problems = served
    results = []
    for problem in (problems["tensors"], problems[form]):
        model = _trained(problem)
        dense = evaluate(model, problem, problem.test)
        ctx = PruneContext.create(model, problem, calibration_size=200, seed=4)
        apply(model, TrialPlan([n for n, _ in PLAN], dict(PLAN), "static", None).steps, ctx)
        pruned = evaluate(model, problem, problem.val, batch_size=77)
        results.append((dense, ctx.calibration, copy.deepcopy(model.state_dict()), pruned))
    (dense_a, calib_a, state_a, pruned_a), (dense_b, calib_b, state_b, pruned_b) = results
    assert dense_a == dense_b and set(dense_a) == {"left", "right", "ink"}
    assert isinstance(calib_b, Split) and torch.equal(calib_a.inputs, calib_b.inputs)
    assert _same(state_a, state_b) and pruned_a == pruned_b


@pytest.mark.parametrize("form", FORMS)
def test_distilling_from_a_dataset_runs_the_teacher_per_batch_and_trains_as_tensors_do(served, form):
    _, problems = served
    teacher = _trained(problems["tensors"])
    states = []
    for problem in (problems["tensors"], problems[form]):
        carrying = Teacher(teacher, 4.0).carrying(problem)
        assert (carrying.train is problem.train) == (problem is problems[form])  # a Dataset is never materialised
        torch.manual_seed(1)
        student = problem.build_model(SPEC)
        fit(student, problem, TrainConfig(epochs=1, batch_size=64), seed=0, distill=Distillation(carrying, 0.5))
        states.append(student.state_dict())
    assert all(torch.allclose(states[0][k], states[1][k], atol=1e-5) for k in states[0])


@pytest.mark.parametrize("item, message", [
    (torch.zeros(1, 10, 10), r"item 0 of the dataset is a Tensor; items must be \(input, \{task: target\}\) or "
                             r"\(input, \(target, ...\)\) in task order, for the tasks \['left', 'right', 'ink'\]"),
    ((torch.zeros(3), {"left": 1, "right": 2}), r"item 0 has targets for \['left', 'right'\]; the tasks are "
                                                r"\['left', 'right', 'ink'\]"),
    ((torch.zeros(3), (1, 2)), r"item 0 has 2 targets; a tuple gives one per task, in the order \['left', 'right'"),
    ((torch.zeros(3), 1), r"item 0 has targets of type int; give \{task: target\} or a tuple"),
    (("pixels", (1, 2, 0.5)), r"item 0: inputs and targets must be tensors, numbers or arrays"),
])
def test_a_bad_item_format_is_named_with_what_is_allowed(served, item, message):
    _, problems = served
    with pytest.raises(ProblemError, match=r"problem 'zoo-2d-ink': the train split: " + message):
        Problem("zoo-2d-ink", problems["tensors"].tasks, [item] * 4, problems["tensors"].val, problems["tensors"].test)


@pytest.mark.parametrize("data, message", [
    ([], "the dataset is empty"),
    (iter([]), "is a list_iterator; give an automtl.Split, an automtl.DatasetSplit or a map-style"),
    (type("Stream", (IterableDataset,), {"__iter__": lambda self: iter([])})(), "is a Stream; give"),
])
def test_only_non_empty_map_style_datasets_are_splits(served, data, message):
    _, problems = served
    with pytest.raises(ProblemError, match=message):
        Problem("p", problems["tensors"].tasks, problems["tensors"].train, data, problems["tensors"].test)


def test_a_factory_returning_a_bad_dataset_is_a_user_error(user_problems):
    with pytest.raises(UserError, match=r"dataset_problem:broken: problem 'zoo-2d-ink': the train split: item 0 "
                                        r"of the dataset is a Tensor; items must be"):
        get_problem("dataset_problem:broken")


def test_the_fingerprint_reads_a_fixed_sample_or_nothing_when_versioned(served):
    module, problems = served
    problem = module.served(problems["tensors"], "dicts")
    datasets = [getattr(problem, name).dataset for name in ("train", "val", "test")]
    for data in datasets:
        data.reads = 0
    first = problem.fingerprint()
    assert [d.reads for d in datasets] == [64, 64, 64] and len(datasets[0]) == 600
    assert problem.fingerprint() == first != problems["tensors"].fingerprint()
    changed = module.served(problems["tensors"], "dicts")
    changed.train.dataset.split = Split(changed.train.dataset.split.inputs.flip(0), changed.train.dataset.split.targets)
    assert changed.fingerprint() != first
    for declared_by in ("split", "dataset"):  # DatasetSplit(version=...) or the Dataset's own attribute
        prints = []
        for version in ("v1", "v2"):
            versioned = module.served(problems["tensors"], "dicts")
            data = versioned.train.dataset
            if declared_by == "dataset":
                data.version = version
            split = DatasetSplit(data, version=version if declared_by == "split" else None)
            versioned.train, data.reads = split.for_tasks(versioned.task_names), 0
            prints.append(versioned.fingerprint())
            assert data.reads == 0
        assert prints[0] != prints[1] != first


def _config(form: str, *extra: str):
    return ["--set", "problem.name=dataset_problem:make", "--set", f"problem.options={{form: {form}}}",
            "--set", f"problem.pythonpath=[{FIXTURES}]", "--set", "model.hidden=[32]", "--set", "dense.epochs=2",
            "--set", "trials=3", "--set", "workers=1", "--set", "threads=1", "--set", "sampler.name=random",
            "--set", "tracking.enabled=false", *extra]


def test_a_bench_with_dataset_splits_pickles_without_the_data_and_rebuilds_it(served, tmp_path):
    config = load(SMOKE, _config("dicts")[1::2] + ["data.num_workers=1"])
    bench = Bench(config, config.build_problem(), SPEC, torch.nn.Linear(1, 1), tmp_path)
    shipped = pickle.dumps(bench)
    assert b"Items" not in shipped and b"dataset_problem" in shipped  # the factory's name, not its data
    rebuilt = pickle.loads(shipped).problem
    assert rebuilt.train.num_workers == 1 and rebuilt.fingerprint() == bench.problem.fingerprint()
    tensors = get_problem("multidigits", train_pairs=50, eval_pairs=20)  # in memory: shipped as it is
    shipped = pickle.loads(pickle.dumps(Bench(config, tensors, SPEC, torch.nn.Linear(1, 1), tmp_path)))
    assert shipped.problem.train.inputs.equal(tensors.train.inputs)


def _values(run_dir) -> list[list[float]]:
    trials = RunDir(run_dir).load_study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    return [t.values for t in sorted(trials, key=lambda t: t.number)]


@pytest.fixture(scope="module")
def tensor_search(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("datasets") / "tensors"
    cli("search", SMOKE, "--run-dir", run_dir, *_config("tensors"))
    return _values(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_a_search_on_datasets_gives_the_trial_values_of_tensors(tensor_search, tmp_path, form):
    cli("search", SMOKE, "--run-dir", tmp_path / form, *_config(form, "--set", "data.num_workers=1"))
    assert _values(tmp_path / form) == tensor_search


@pytest.mark.slow
@pytest.mark.ray
def test_a_ray_search_on_datasets_gives_the_trial_values_of_tensors(tensor_search, tmp_path):
    cli("search", SMOKE, "--run-dir", tmp_path / "ray", *_config("dicts", "--set", "backend.max_concurrent=1"),
        *RAY)
    assert _values(tmp_path / "ray") == tensor_search

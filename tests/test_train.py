import logging
from dataclasses import replace

import pytest
import torch
from torch.nn.utils import prune

from automtl import ModelSpec, TrainConfig, evaluate, get_problem, schedules
import automtl.dense as dense_mod
from automtl.dense import trained as dense_model
from automtl.models import task_outputs
from automtl.optimizers import OptimizerSettings
from automtl.train import Distillation, Teacher, fit

SPEC = ModelSpec("mlp", (64, 32))
QUICK = TrainConfig(epochs=2)


def test_dense_cache_miss_then_hit(small_digits, tmp_path, monkeypatch):
    first = dense_model(small_digits, SPEC, QUICK, seed=0, cache_dir=tmp_path)
    assert not first.cached and first.path.exists()
    calls = []
    monkeypatch.setattr(dense_mod, "fit", lambda *a, **k: calls.append(1))
    second = dense_model(small_digits, SPEC, QUICK, seed=0, cache_dir=tmp_path)
    assert second.cached and second.path == first.path and not calls
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name])


@pytest.mark.parametrize("change", [{"seed": 1}, {"config": TrainConfig(epochs=3)}, {"spec": ModelSpec("mlp", (32,))}])
def test_dense_cache_key_covers_seed_epochs_and_model(small_digits, tmp_path, change):
    base = {"spec": SPEC, "config": QUICK, "seed": 0}
    a = dense_model(small_digits, cache_dir=tmp_path, **base)
    b = dense_model(small_digits, cache_dir=tmp_path, **{**base, **change})
    assert a.path != b.path and not b.cached


def test_dense_cache_key_covers_the_data(tmp_path):
    a = get_problem("multidigits", train_pairs=200, eval_pairs=50, off=2)
    b = get_problem("multidigits", train_pairs=200, eval_pairs=50, off=3)
    assert dense_model(a, SPEC, QUICK, 0, tmp_path).path != dense_model(b, SPEC, QUICK, 0, tmp_path).path


def test_corrupt_cached_checkpoint_is_retrained_not_crashed_on(small_digits, tmp_path, caplog):
    first = dense_model(small_digits, SPEC, QUICK, seed=0, cache_dir=tmp_path)
    first.path.write_bytes(first.path.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        again = dense_model(small_digits, SPEC, QUICK, seed=0, cache_dir=tmp_path)
    assert not again.cached
    assert "unreadable" in caplog.text and "retraining" in caplog.text
    assert dense_model(small_digits, SPEC, QUICK, seed=0, cache_dir=tmp_path).cached


def test_same_seed_gives_identical_metrics(small_digits, tmp_path):
    metrics = [
        evaluate(dense_model(small_digits, SPEC, QUICK, seed=7, cache_dir=tmp_path / str(i)).model,
                 small_digits, small_digits.test)
        for i in range(2)
    ]
    assert metrics[0] == metrics[1]


def test_training_learns_both_tasks(small_digits, tmp_path):
    dense = dense_model(small_digits, SPEC, TrainConfig(epochs=10), seed=0, cache_dir=tmp_path)
    accuracy = evaluate(dense.model, small_digits, small_digits.test)
    assert min(accuracy.values()) > 0.6  # chance is 0.1


def test_fine_tuning_keeps_pruned_weights_at_zero(small_digits):
    torch.manual_seed(0)
    model = small_digits.build_model(SPEC)
    layer = model.trunk[1]
    prune.l1_unstructured(layer, "weight", amount=0.5)
    removed = layer.weight_mask == 0
    teacher = small_digits.build_model(SPEC)
    fit(model, small_digits, TrainConfig(epochs=1), seed=0, distill=Distillation(Teacher(teacher), weight=0.5))
    assert torch.all(layer.weight[removed] == 0)
    assert layer.weight[~removed].abs().sum() > 0


def test_distillation_pulls_the_student_towards_the_teacher(small_digits):
    torch.manual_seed(0)
    teacher = small_digits.build_model(SPEC)
    fit(teacher, small_digits, TrainConfig(epochs=3), seed=0)
    inputs = small_digits.val.inputs

    def disagreement(student):
        with torch.no_grad():
            s, t = student(inputs), teacher(inputs)
        return sum((s[k].softmax(1) - t[k].softmax(1)).abs().mean().item() for k in s)

    torch.manual_seed(1)
    plain, distilled = small_digits.build_model(SPEC), small_digits.build_model(SPEC)
    distilled.load_state_dict(plain.state_dict())
    fit(plain, small_digits, QUICK, seed=0)
    fit(distilled, small_digits, QUICK, seed=0, distill=Distillation(Teacher(teacher), weight=0.9))
    assert disagreement(distilled) < disagreement(plain)


@pytest.mark.slow
def test_default_multidigits_reaches_90_percent_on_both_tasks(tmp_path):
    problem = get_problem("multidigits", off=2, seed=0)
    dense = dense_model(problem, ModelSpec("mlp", (256, 128)), TrainConfig(), seed=0, cache_dir=tmp_path)
    accuracy = evaluate(dense.model, problem, problem.test)
    assert min(accuracy.values()) >= 0.90, accuracy


@pytest.mark.slow
def test_mnist1d_pair_trains_well_above_chance(tmp_path):
    problem = get_problem("mnist1d-pair", num_samples=4000, seed=0)
    dense = dense_model(problem, problem.default_model, TrainConfig(epochs=10), seed=0, cache_dir=tmp_path)
    accuracy = evaluate(dense.model, problem, problem.test)
    assert min(accuracy.values()) > 0.3, accuracy


def test_a_cuda_trial_without_a_gpu_fails_with_a_clear_reason(monkeypatch):
    from automtl.devices import resolve_device
    from automtl.errors import TrialFailed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(TrialFailed, match="device is cuda but this worker sees no GPU"):
        resolve_device("cuda")


def test_moving_a_problem_moves_every_split_and_keeps_the_original(small_digits):
    moved = small_digits.to("meta")
    for split in ("train", "val", "test"):
        assert getattr(moved, split).inputs.device.type == "meta"
        assert all(t.device.type == "meta" for t in getattr(moved, split).targets.values())
        assert getattr(small_digits, split).inputs.device.type == "cpu"
    assert small_digits.to("cpu") is small_digits


def _one_full_batch_step(problem, config):
    """A model and its parameters before and after one optimiser step over the whole training split."""
    torch.manual_seed(0)
    model = problem.build_model(SPEC)
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, problem, replace(config, epochs=1, batch_size=len(problem.train)), seed=0)
    return model, before


def test_sgd_takes_exactly_the_gradient_step_and_clipping_bounds_it(small_digits):
    plain = TrainConfig(lr=0.5, optimizer=OptimizerSettings("sgd", momentum=0.0))
    model, before = _one_full_batch_step(small_digits, plain)
    torch.manual_seed(0)
    reference = small_digits.build_model(SPEC)
    loss = sum(t.loss(task_outputs(reference(small_digits.train.inputs), small_digits.task_names)[t.name],
                      small_digits.train.targets[t.name]) for t in small_digits.tasks) / len(small_digits.tasks)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for after, start, grad in zip(model.parameters(), before, grads):
        torch.testing.assert_close(after.detach(), start - 0.5 * grad, rtol=1e-4, atol=1e-5)
    clipped, before = _one_full_batch_step(small_digits, replace(plain, grad_clip=1e-3))
    moved = torch.cat([(a.detach() - b).flatten() for a, b in zip(clipped.parameters(), before)]).norm()
    assert 0 < moved <= 0.5 * 1e-3 * 1.001


def test_adamw_decays_decoupled_unlike_adams_l2_term(small_digits):
    results = {}
    for name in ("adam", "adamw"):
        for decay in (0.0, 0.5):
            model, _ = _one_full_batch_step(small_digits, TrainConfig(lr=1e-2, optimizer=OptimizerSettings(name, decay)))
            results[name, decay] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(results["adam", 0.0], results["adamw", 0.0])
    assert not torch.allclose(results["adam", 0.5], results["adamw", 0.5])
    assert not torch.allclose(results["adamw", 0.5], results["adamw", 0.0])


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("step", {"step_epochs": 2, "gamma": 0.5}, [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]),
    ("constant", {"warmup_steps": 4}, [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1]),
    ("cosine", {"warmup_steps": 2}, [0.5, 1, 1, 0.962, 0.854, 0.691, 0.5, 0.309, 0.146, 0.038]),
])
def test_schedules_follow_their_curve_per_step(name, options, expected):
    factor = schedules.factor(name, total_steps=10, steps_per_epoch=2, **options)
    assert [round(factor(step), 3) for step in range(10)] == pytest.approx(expected, abs=1e-3)


def test_onecycle_rises_to_the_learning_rate_at_30_percent_then_falls_as_torchs_does():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    torchs = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1.0, total_steps=100, cycle_momentum=False)
    ours = schedules.factor("onecycle", total_steps=100)
    for step in range(100):
        assert ours(step) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-6, abs=1e-9), step
        optimizer.step()
        torchs.step()

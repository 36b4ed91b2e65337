"""``automtl inspect``: what a model can prune, before any search, from the mechanics the search uses."""

import json
from dataclasses import replace

import pytest
import torch

import automtl
from automtl.errors import UserError
from tests.fixtures.zoo import ZOO, digits, layernorm_digits, search_space
from tests.test_search import cli

CONFIG = {"pruning": {"strategies": {"magnitude": None, "activation": None}, "calibration_size": 64},
          "fine_tune": {"epochs": 2}, "data": {"batch_size": 256}}


def zoo_problem(name):
    """A small problem whose model factory builds the zoo model ``name``."""
    layout, regression, factory = ZOO[name]
    base = digits(layout, regression, train_pairs=300, eval_pairs=100)
    return replace(base, model_factory=lambda _spec: factory(base))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_is_inspected_as_the_search_will_prune_it(name):
    problem = zoo_problem(name)
    found = automtl.inspect(CONFIG, problem)
    torch.manual_seed(0)
    model = problem.build_model()
    assert found.parameters == sum(p.numel() for p in model.parameters()) and found.flops > 0
    names = dict(model.named_modules())
    assert found.layers and all(layer.name in names for layer in found.layers)
    heads = [layer for layer in found.layers if layer.head]
    assert len(heads) == len(problem.tasks), "every task's output layer is a head"
    assert found.groups or found.refused or found.untraceable
    head_names = {layer.name for layer in heads}
    for group in found.groups:
        assert group.units > 0 and group.producers and group.root in group.producers
        assert not head_names & set(group.producers), "a head's classes are never units"
        assert set(group.producers + group.norms + group.readers) <= set(names)
    assert found.strategies["magnitude"].startswith("weights of")
    cost = found.trial
    assert cost.seconds_per_batch > 0 and cost.weights_bytes > 0 and 0 < cost.sparsity < 1
    assert cost.estimated_seconds > cost.seconds_per_batch * cost.batches_per_epoch * cost.epochs
    json.dumps(found.as_dict())


def test_groups_name_their_batchnorm_and_readers_and_refused_ones_say_why():
    found = automtl.inspect(CONFIG, zoo_problem("user_resnet"))
    stream = next(g for g in found.groups if "stem_bn" in g.norms)
    assert {"stem", "conv2"} <= set(stream.producers) and {"bn2", "stem_bn"} <= set(stream.norms)
    assert "conv1" in stream.readers and stream.unit == "channel"
    refused = automtl.inspect({"pruning": {"strategies": {"magnitude": None}}},
                              layernorm_digits(train_pairs=200, eval_pairs=100))
    assert "LayerNorm" in " ".join(refused.refused.values())


def test_inspect_refuses_what_the_search_refuses_with_the_same_message(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(search_space("layernorm_digits", {"train_pairs": 200, "eval_pairs": 100},
                                  pruning={"strategies": {"activation": None}}, tracking={"enabled": False}))
    inspected = cli("inspect", space, check=False)
    searched = cli("search", space, "--run-dir", tmp_path / "run", check=False)
    assert inspected.returncode == searched.returncode == 2
    assert "find no removable unit" in inspected.stderr and inspected.stderr.strip() == searched.stderr.strip()
    with pytest.raises(UserError, match="does not exist"):
        automtl.inspect({**CONFIG, "dense": {"weights": str(tmp_path / "nowhere.pt")}}, zoo_problem("mlp"))


def test_the_cli_prints_the_inspection_as_json(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(search_space("resnet_digits", {"train_pairs": 300, "eval_pairs": 100}, **CONFIG))
    found = json.loads(cli("inspect", space, "--json").stdout)
    assert found["model"] == "UserResNet" and found["groups"] and found["trial"]["estimated_seconds"] > 0
    table = cli("inspect", space).stdout
    assert "removable unit groups" in table and "stem_bn" in table and "one trial" in table

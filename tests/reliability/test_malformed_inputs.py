"""Malformed search spaces (fuzzed) and damaged checkpoints: always a clear error and exit 2, never a traceback."""

import copy
import math
import shutil

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automtl import cli as cli_mod
from automtl import config as config_mod
from automtl.errors import UserError
from automtl.rundir import RunDir
from tests.test_search import FAST, SMOKE, cli

VALID = config_mod.read_yaml(SMOKE.read_text()) | {"name": "fuzz"}
TASKS = ["left", "right"]

# Values of every kind, including the awkward ones: huge, non-finite, negative, empty, wrong container.
NASTY = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e-308, 10**100, -1, 0, 0.0]),
    st.text(max_size=12), st.sampled_from(["", "magnitude", "pruning", "simplex", "cuda", "ray", "auto"]),
    st.lists(st.integers(-5, 300), max_size=4), st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
)


def _paths(tree, prefix=()):
    """Every key path in a nested dict (the places a mutation can hit)."""
    for key, value in tree.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


PATHS = sorted(set(_paths(VALID)) | {("pruning", "strategies", "telepathy"), ("backend", "name"), ("colour",)})


@st.composite
def mutated(draw):
    """The smoke search space with 1-3 mutations: a wrong value, a deleted key, an unknown strategy, an empty range."""
    tree = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = tree
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        kind = draw(st.sampled_from(["value", "delete", "range"]))
        if kind == "delete":
            node.pop(path[-1], None)
        elif kind == "range":
            low, high = draw(st.floats(-2, 2)), draw(st.floats(-2, 2))
            node[path[-1]] = {"low": max(low, high), "high": min(low, high)}
        else:
            node[path[-1]] = draw(NASTY)
    return tree


def _finite(tree) -> bool:
    return not any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(tree))


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _leaves(value)
    else:
        yield tree


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=mutated())
def test_fuzzed_search_spaces_are_accepted_or_refused_clearly(tmp_path_factory, tally, tree):
    tally["search spaces fuzzed"] += 1
    path = tmp_path_factory.mktemp("fuzz") / "space.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        config = config_mod.load(path)
        config.check(TASKS)
    except UserError as exc:
        message = str(exc)
        assert message and "Traceback" not in message
        tally["fuzzed search spaces refused"] += 1
    else:
        assert config.trials >= 1 and config.pruning.strategies and _finite(config.model_dump())


@pytest.mark.parametrize("text, says", [
    ("", "pruning"),
    ("\x00\x01\x02 not yaml {{{", "not valid YAML"),
    ("- a\n- list", "must be a YAML mapping"),
    ("pruning: {strategies: {telepathy: {low: 0, high: 1}}}", "telepathy"),
    ("pruning: {strategies: {magnitude: {low: 0.9, high: 0.1}}}", "pruning.strategies.magnitude"),
    ("trials: 1e400\npruning: {strategies: {magnitude: null}}", "trials"),
    ("model: {arch: mlp, hidden: [100000000000]}\npruning: {strategies: {magnitude: null}}", "model"),
    ("problem: {name: multidigits, options: {train_pairs: -5}}\npruning: {strategies: {magnitude: null}}",
     "train_pairs"),
])
def test_the_cli_refuses_bad_files_with_exit_2_and_writes_nothing(tmp_path, capsys, tally, text, says):
    tally["malformed files given to the CLI"] += 1
    space = tmp_path / "space.yaml"
    space.write_bytes(text.encode())
    code = cli_mod.main(["search", str(space), "--run-dir", str(tmp_path / "run")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("searched") / "run"
    cli("search", SMOKE, "--trials", 3, "--run-dir", run_dir, "--json", *FAST, "--set", "tracking.enabled=false",
        "--set", "keep_weights=all")  # trial 0 is exported by number
    return run_dir


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_trial_weights_file_is_refused_by_export(searched, tmp_path, tally, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(searched, run_dir)
    weights = run_dir / RunDir(run_dir).load_study().trials[0].user_attrs["weights"]
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    tally["damaged checkpoints refused"] += 1
    result = cli("export", run_dir, "--trial", 0, "-o", tmp_path / "out", check=False)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(weights.name) in message and ("fails its checksum" in message or "is unreadable" in message)
    assert not (tmp_path / "out").exists()


def test_a_damaged_dense_checkpoint_is_detected_and_retrained_on_resume(searched, tmp_path, tally):
    run_dir = tmp_path / "run"
    shutil.copytree(searched, run_dir)
    (dense,) = run_dir.glob("dense/*.pt")
    dense.write_bytes(dense.read_bytes()[:1000])
    tally["damaged checkpoints refused"] += 1
    result = cli("search", SMOKE, "--trials", 4, "--run-dir", run_dir, "--resume", "--json", *FAST,
                 "--set", "tracking.enabled=false")
    assert "is unreadable" in " ".join(result.stderr.split()) and "retraining" in result.stderr
    from automtl import checkpoints

    checkpoints.load(dense)  # replaced by a whole, verified checkpoint


def _float_fields(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _float_fields(value, (*prefix, key))
        elif isinstance(value, float):
            yield ".".join((*prefix, key))


FLOAT_FIELDS = sorted(_float_fields(config_mod.load(SMOKE, ["timeout=60", "backend.name=ray"]).model_dump()))


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_number_field_refuses_non_finite_values(tally, field, value):
    tally["search spaces fuzzed"] += 1
    with pytest.raises(UserError, match=field.split(".")[-1]):
        config_mod.load(SMOKE, [f"{field}={value}"])
    tally["fuzzed search spaces refused"] += 1

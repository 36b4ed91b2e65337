import gzip

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from automtl import UserError, get_problem
from automtl.problems.multimnist import FILES, read_idx


def _sources(split):
    return set(split.meta["sources"].flatten().tolist())


@pytest.mark.parametrize("off", [1, 2, 4])
def test_multidigits_shapes_and_labels(off):
    problem = get_problem("multidigits", off=off, train_pairs=300, eval_pairs=100)
    side = 8 + off
    assert problem.input_shape == (1, side, side)
    assert problem.task_names == ["left", "right"]
    for split, n in ((problem.train, 300), (problem.val, 100), (problem.test, 100)):
        assert split.inputs.shape == (n, 1, side, side)
        assert 0.0 <= split.inputs.min() and split.inputs.max() <= 1.0
        for target in split.targets.values():
            assert target.dtype == torch.int64 and 0 <= target.min() and target.max() <= 9


def test_multidigits_pixels_are_the_max_of_the_two_placed_digits():
    problem = get_problem("multidigits", off=2, train_pairs=50, eval_pairs=10)
    digits = load_digits()
    images = digits.images / 16.0
    for i in range(5):
        left, right = problem.train.meta["sources"][i].tolist()
        canvas = np.zeros((10, 10))
        canvas[:8, :8] = images[left]
        canvas[2:, 2:] = np.maximum(canvas[2:, 2:], images[right])
        np.testing.assert_allclose(problem.train.inputs[i, 0].numpy(), canvas, atol=1e-6)
        assert problem.train.targets["left"][i] == digits.target[left]
        assert problem.train.targets["right"][i] == digits.target[right]


def test_multidigits_splits_share_no_source_digit():
    problem = get_problem("multidigits", train_pairs=5000, eval_pairs=2000)
    train, val, test = _sources(problem.train), _sources(problem.val), _sources(problem.test)
    assert not train & test and not train & val and not val & test
    assert len(train) > 900  # the pairs actually cover the training pool


def test_same_seed_same_data_other_seed_other_data():
    a = get_problem("multidigits", train_pairs=200, eval_pairs=50, seed=3)
    b = get_problem("multidigits", train_pairs=200, eval_pairs=50, seed=3)
    c = get_problem("multidigits", train_pairs=200, eval_pairs=50, seed=4)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_bad_problem_options_name_the_option():
    with pytest.raises(UserError, match="'off'.*\\[1, 8\\]"):
        get_problem("multidigits", off=0)
    with pytest.raises(UserError, match="no option 'offset'.*allowed.*'off'"):
        get_problem("multidigits", offset=2)
    with pytest.raises(UserError, match="'train_pairs'.*integer"):
        get_problem("multidigits", train_pairs="many")
    with pytest.raises(UserError, match="unknown; allowed.*multidigits"):
        get_problem("multidgits")


def test_mnist1d_pair_shapes_and_independent_tasks():
    problem = get_problem("mnist1d-pair", num_samples=1000)
    assert problem.input_shape == (2, 40)
    assert problem.task_names == ["first", "second"]
    assert (len(problem.train), len(problem.val), len(problem.test)) == (640, 160, 200)
    first, second = problem.train.targets["first"], problem.train.targets["second"]
    assert set(first.unique().tolist()) == set(range(10)) == set(second.unique().tolist())
    assert (first == second).float().mean() < 0.3  # independent labels, not copies


def test_mnist1d_pair_does_not_touch_global_random_state():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    get_problem("mnist1d-pair", num_samples=200)
    assert np.random.rand() == expected


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 40), ("test", 20)):
        gz = part == "test"  # exercise both plain and gzipped files
        _write_idx(tmp_path / (FILES[f"{part}_images"] + (".gz" if gz else "")), rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(tmp_path / (FILES[f"{part}_labels"] + (".gz" if gz else "")), rng.integers(0, 10, n), gz)
    return tmp_path


def test_multimnist_from_idx_files(tiny_mnist):
    problem = get_problem("multimnist", root=str(tiny_mnist), train_pairs=30, eval_pairs=10)
    assert problem.input_shape == (1, 36, 36)
    assert len(problem.train) == 30 and len(problem.test) == 10
    images = read_idx(tiny_mnist / FILES["train_images"]) / 255.0
    left, right = problem.train.meta["sources"][0].tolist()
    canvas = np.zeros((36, 36))
    canvas[:28, :28] = images[left]
    canvas[6:34, 6:34] = np.maximum(canvas[6:34, 6:34], images[right])
    np.testing.assert_allclose(problem.train.inputs[0, 0].numpy(), canvas, atol=1e-6)
    assert not _sources(problem.train) & _sources(problem.val)


def test_multimnist_missing_directory_names_path_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        get_problem("multimnist", root=str(missing))
    assert str(missing) in str(info.value) and "train-images-idx3-ubyte" in str(info.value)


def test_multimnist_missing_file_is_named(tiny_mnist):
    (tiny_mnist / FILES["train_labels"]).unlink()
    with pytest.raises(UserError, match="lacks train-labels-idx1-ubyte"):
        get_problem("multimnist", root=str(tiny_mnist))


def test_multimnist_corrupt_files_are_refused(tiny_mnist):
    path = tiny_mnist / FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        get_problem("multimnist", root=str(tiny_mnist))
    path.write_bytes(b"\x89PNG garbage")
    with pytest.raises(UserError, match="bad magic"):
        get_problem("multimnist", root=str(tiny_mnist))

import pytest
import torch

from automtl import checkpoints


def test_round_trip_keeps_tensors_and_meta(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.arange(5), "empty": torch.zeros(0)}
    checkpoints.save(tmp_path / "c.pt", state, {"epochs": 3})
    loaded, meta = checkpoints.load(tmp_path / "c.pt")
    assert meta == {"epochs": 3}
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    # Still a plain torch file that loads with weights_only.
    assert "state" in torch.load(tmp_path / "c.pt", weights_only=True)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    checkpoints.save(path, {"w": torch.randn(100, 100)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(checkpoints.CorruptCheckpoint, match="unreadable"):
        checkpoints.load(path)


def test_tampered_checkpoint_fails_checksum(tmp_path):
    path = tmp_path / "c.pt"
    checkpoints.save(path, {"w": torch.ones(4)})
    payload = torch.load(path, weights_only=True)
    payload["state"]["w"][0] = 2.0
    torch.save(payload, path)
    with pytest.raises(checkpoints.CorruptCheckpoint, match="checksum"):
        checkpoints.load(path)


def test_failed_write_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoints.save(path, {"w": torch.ones(4)}, {"v": 1})

    def boom(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints.os, "replace", boom)
    with pytest.raises(OSError):
        checkpoints.save(path, {"w": torch.zeros(4)}, {"v": 2})
    assert checkpoints.load(path)[1] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_compact_checkpoint_is_small_and_exact(tmp_path):
    sparse = torch.randn(256, 256)
    sparse[torch.rand(256, 256) < 0.9] = 0
    state = {"sparse": sparse, "dense": torch.randn(64), "ints": torch.arange(100)}
    checkpoints.save(tmp_path / "full.pt", state)
    checkpoints.save(tmp_path / "compact.pt", state, {"trial": 3}, compact=True)
    loaded, meta = checkpoints.load(tmp_path / "compact.pt")
    assert meta == {"trial": 3}
    assert all(torch.equal(loaded[k], state[k]) for k in state) and set(loaded) == set(state)
    assert (tmp_path / "compact.pt").stat().st_size < 0.3 * (tmp_path / "full.pt").stat().st_size


def test_digest_of_existing_checkpoints_is_unchanged():
    # Pinned from the digest as first released: tensors with dim >= 1 must keep hashing the same bytes.
    state = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "i": torch.arange(4),
        "b": torch.tensor([True, False, True]),
    }
    assert checkpoints.digest(state, '{"v": 1}') == "ae911d0dc1b6f5ab08c5e51647ae2d4908eb46988b211e942b44a27bbca3e866"


@pytest.mark.parametrize("compact", [False, True])
def test_every_kind_of_tensor_round_trips(tmp_path, compact):
    mostly_zero = torch.zeros(16, 8)
    mostly_zero[::4, ::3] = torch.randn(4, 3)
    state = {
        "steps": torch.tensor(7),  # 0-d int64, like BatchNorm's num_batches_tracked
        "scale": torch.tensor(0.5),
        "flags": torch.tensor([True, False, True]),
        "ints": torch.arange(-3, 9, dtype=torch.int32).reshape(3, 4),
        "mostly_zero": mostly_zero,
        "empty": torch.zeros(0, 3),
    }
    checkpoints.save(tmp_path / "c.pt", state, compact=compact)
    loaded, _ = checkpoints.load(tmp_path / "c.pt")
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
    if compact:  # the mostly-zero tensor was stored packed
        assert "mostly_zero.bitmap" in torch.load(tmp_path / "c.pt", weights_only=True)["state"]


@pytest.mark.parametrize("compact", [False, True])
def test_batchnorm_model_round_trips(tmp_path, compact):
    def model():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())

    trained = model()
    trained(torch.randn(8, 1, 6, 6))  # updates running stats and num_batches_tracked
    checkpoints.save(tmp_path / "c.pt", trained.state_dict(), compact=compact)
    fresh = model()
    fresh.load_state_dict(checkpoints.load(tmp_path / "c.pt")[0])
    original, restored = trained.state_dict(), fresh.state_dict()
    assert original["1.num_batches_tracked"].dim() == 0 and int(restored["1.num_batches_tracked"]) == 1
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor), name

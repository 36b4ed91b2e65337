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

"""SIGKILL at any moment (dense training, a trial, a half-written checkpoint), then --resume: nothing is lost.

The search keeps the weights of the front only (``keep_weights: front``, the default): every trial that may
still be exported keeps its weights through every kill; dominated trials' weights go."""

import json
import random
import time

from automtl import checkpoints
from automtl.rundir import RunDir
from tests.reliability.conftest import kill, start, wait_until
from tests.test_search import FAST, SMOKE, _completed

TRIALS = 30


def _search(run_dir, resume=False, **faults):
    env = {f"AUTOMTL_FAULT_{k.upper()}": str(v) for k, v in faults.items()}
    args = ["search", SMOKE, "--trials", TRIALS, "--workers", 2, "--run-dir", run_dir, "--json", *FAST,
            "--set", "fine_tune.epochs=40", "--set", "tracking.enabled=false"]
    return start(*args, *(["--resume"] if resume else []), env=env)


def _check_nothing_lost(run_dir, before: dict) -> dict:
    """Finished trials only ever accumulate, unchanged; every front trial's weights are there, load and pass
    their checksum (a dominated trial's may be gone); every checkpoint in place loads."""
    now = _completed(run_dir)
    assert all(number in now and now[number] == values for number, values in before.items())
    study = RunDir(run_dir).load_study() if before or now else None
    for number, values in now.items():
        if not _dominated(values, now.values()):
            checkpoints.load(run_dir / study.trials[number].user_attrs["weights"])  # raises if damaged or gone
    for path in [*run_dir.glob("dense/*.pt"), *run_dir.glob("trials/*.pt")]:
        checkpoints.load(path)  # only whole files are ever renamed into place; half-written ones stay .tmp
    return now


def _dominated(values, others):
    return any(all(o >= v for o, v in zip(other, values)) and other != values for other in others)


def test_sigkill_at_random_moments_then_resume_finishes_the_study(tmp_path, tally):
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    rng = random.Random(8)
    done: dict = {}

    # 1. while the dense checkpoint is half-written (dense training has just finished)
    proc = _search(run_dir, pause="*/dense/*.pt", marker=marker)
    wait_until(marker.exists, proc=proc)
    kill(proc)
    assert list(run_dir.glob("dense/.*.tmp")) and not list(run_dir.glob("dense/*.pt"))
    done = _check_nothing_lost(run_dir, done)
    assert not done

    # 2. while a trial's weights are half-written (a forked worker may be the writer)
    marker.unlink()
    proc = _search(run_dir, resume=True, pause="*/trials/trial-000003.pt", marker=marker)
    wait_until(marker.exists, proc=proc)
    kill(proc)
    assert not (run_dir / "trials/trial-000003.pt").exists()
    done = _check_nothing_lost(run_dir, done)

    # 3. at random moments: mid-trial, between trials, or during start-up
    for _ in range(3):
        proc = _search(run_dir, resume=True)
        wait_until(lambda: len(_completed(run_dir)) > len(done), proc=proc)
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        kill(proc)
        done = _check_nothing_lost(run_dir, done)
        assert len(done) < TRIALS, "the search finished before it could be killed; make the trials slower"
    tally["sigkills survived"] += 5

    # 4. resume to the end
    proc = _search(run_dir, resume=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    done = _check_nothing_lost(run_dir, done)
    assert len(done) == TRIALS

    # the front reported is exactly the non-dominated set of the completed trials
    front = json.loads(out)["front"]
    expected = {n for n, v in done.items() if not _dominated(v, done.values())}
    assert {row["trial"] for row in front} == expected
    # and only they keep weights: each dominated trial's went once another trial dominated it
    kept = {int(path.stem.split("-")[1]) for path in run_dir.glob("trials/*.pt")}
    assert kept == expected

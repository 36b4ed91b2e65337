"""A run directory: the study storage (source of truth), the resolved config, dense and trial weights.

Layout::

    RUN_DIR/
      config.yaml      the validated search space the study was created with
      study.journal    Optuna journal storage: every trial, its params, values and attributes
      study.json       where the study is: {"storage": null (the journal) or an Optuna RDB storage URL
                       (config ``storage:``, e.g. PostgreSQL), "study_name": …}
      dense/           the dense reference's weights
      trials/          trial-NNNNNN.pt: pruned weights of each finished trial (those ``keep_weights`` keeps)
      .lock            held by the process searching this directory
      .weights.lock    held shared by exports reading trial weights, exclusively while dominated ones go
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from automtl import config as config_mod
from automtl.checkpoints import atomic_write_bytes
from automtl.errors import UserError

STUDY = "automtl"  # the name in an RDB storage starts with it
TRIALS = "trials"  # the folder of the trials' weights


def weights_path(number: int) -> str:
    """Where trial ``number`` keeps its pruned weights, relative to the run directory."""
    return f"{TRIALS}/trial-{number:06d}.pt"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage (SQLAlchemy URL); a clear error when it cannot be opened. SQLite waits up to a
    minute for another worker's write instead of its default 5 s."""
    engine = {"pool_pre_ping": True} | ({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as exc:  # noqa: BLE001 - driver missing, server down, bad URL: all mean "cannot open"
        raise UserError(f"storage: cannot open the Optuna storage {url!r} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def journal(self) -> Path:
        return self.path / "study.journal"

    @property
    def pointer(self) -> Path:
        return self.path / "study.json"

    def exists(self) -> bool:
        return (self.journal.exists() or self.pointer.exists()) and self.config_file.exists()

    def require(self) -> "RunDir":
        if not self.exists():
            raise UserError(f"{self.path} is not an automtl run directory (no study.journal / config.yaml in it)")
        return self

    def location(self) -> tuple[str | None, str]:
        """``(RDB storage URL, study name)``; the URL is None when the study is the run directory's journal."""
        if self.pointer.exists():
            where = json.loads(self.pointer.read_text())
            return where["storage"], where["study_name"]
        # a journal from before the pointer was written for journals too (its study is named "automtl"), or
        # one whose pointer a kill prevented: the journal's only study
        names = optuna.get_all_study_names(self.storage()) if self.journal.exists() else []
        return None, names[0] if len(names) == 1 else STUDY

    def storage(self, url: str | None = None) -> optuna.storages.BaseStorage:
        """The RDB storage at ``url``, else the run directory's journal."""
        return open_storage(url) if url else JournalStorage(JournalFileBackend(str(self.journal)))

    def create_study(self, url: str | None, label: str, directions: list[str]) -> optuna.Study:
        """A new study named ``label`` in the journal (so optuna-dashboard shows the config's name), or in the
        RDB storage ``url`` under a unique name; this directory records where."""
        name = f"{STUDY}-{label}-{uuid.uuid4().hex[:12]}" if url else label  # a database holds many studies
        study = optuna.create_study(study_name=name, storage=self.storage(url), directions=directions)
        atomic_write_bytes(self.pointer, json.dumps({"storage": url, "study_name": name}).encode())
        return study

    def load_config(self) -> config_mod.SearchConfig:
        return config_mod.validate(config_mod.read_yaml(self.config_file.read_text()))

    def write_config(self, config: config_mod.SearchConfig) -> None:
        text = yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)
        atomic_write_bytes(self.config_file, text.encode())

    def load_study(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        self.require()
        url, name = self.location()
        return optuna.load_study(study_name=name, storage=self.storage(url), sampler=sampler)

    def repair_journal(self) -> int:
        """Cut a record left half-written (a crash or a full disk mid-append) off the end of the journal.

        Optuna still reads such a journal, but a record appended after the fragment would be joined to it
        and lost. Call only while holding :meth:`exclusive`. Returns the number of bytes removed.
        """
        if not self.journal.exists():
            return 0
        with open(self.journal, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            end = size
            while end > 0:
                start = max(0, end - 65536)
                fh.seek(start)
                newline = fh.read(end - start).rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            if end < size:
                fh.truncate(end)
                os.fsync(fh.fileno())
        return size - end

    @contextmanager
    def weights_lock(self, shared: bool, wait: bool) -> Iterator[bool]:
        """Hold the trial weights' lock (shared: reading; exclusive: deleting); yields whether it is held
        (False only when ``wait`` is off and another process holds it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".weights.lock", "a+") as fh:
            try:
                fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def busy(self) -> bool:
        """Whether a search holds the directory's lock now."""
        if not (self.path / ".lock").exists():
            return False
        with open(self.path / ".lock") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the directory's lock; a second search on it is refused clearly."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip() or "?"
                raise UserError(
                    f"{self.path} is being searched by another process (pid {owner}); "
                    "wait for it to finish or choose another --run-dir"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def asking(self) -> Iterator[None]:
        """Serialise 'count the budget, then ask for a trial' across worker processes."""
        with open(self.path / ".ask.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

"""Stand-in for ``datasets`` (see ../README.md): ``load_dataset("nyu-mll/glue", "mrpc")`` gives a
synthetic sentence-pair task, deterministic, with ``map``/``rename_column`` and indexing."""

from __future__ import annotations

import random
from typing import Any, Callable

WORDS = [f"w{i}" for i in range(24)]


class Dataset:
    def __init__(self, columns: dict[str, list]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            return self.columns[index]
        return {k: v[index] for k, v in self.columns.items()}

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def map(self, function: Callable, batched: bool = False, remove_columns: Any = None, **_: Any) -> "Dataset":
        assert batched, "the stand-in maps batched functions only"
        added = function(self.columns)
        columns = {k: v for k, v in self.columns.items() if k not in (remove_columns or ())}
        columns.update({k: list(v) for k, v in added.items()})
        return Dataset(columns)

    def rename_column(self, old: str, new: str) -> "Dataset":
        return Dataset({new if k == old else k: v for k, v in self.columns.items()})

    def select(self, indices: Any) -> "Dataset":
        indices = list(indices)
        return Dataset({k: [v[i] for i in indices] for k, v in self.columns.items()})


class DatasetDict(dict):
    def map(self, *args: Any, **kwargs: Any) -> "DatasetDict":
        return DatasetDict({k: v.map(*args, **kwargs) for k, v in self.items()})

    def rename_column(self, old: str, new: str) -> "DatasetDict":
        return DatasetDict({k: v.rename_column(old, new) for k, v in self.items()})


class IterableDataset:  # Accelerate checks isinstance against it
    pass


def _split(n: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    rows: dict[str, list] = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
    for i in range(n):
        first = rng.sample(WORDS, 6)
        shared = rng.randint(0, 6)
        second = first[:shared] + rng.sample([w for w in WORDS if w not in first], 6 - shared)
        rng.shuffle(second)
        rows["sentence1"].append(" ".join(first))
        rows["sentence2"].append(" ".join(second))
        rows["label"].append(int(shared >= 3))
        rows["idx"].append(i)
    return Dataset(rows)


def load_dataset(path: str, name: str | None = None, **_: Any) -> DatasetDict:
    return DatasetDict({"train": _split(64, 1), "validation": _split(37, 2), "test": _split(10, 3)})

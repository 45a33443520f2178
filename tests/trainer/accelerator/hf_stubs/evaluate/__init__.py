"""Stand-in for ``evaluate`` (see ../README.md): ``load("glue", "mrpc")`` is accuracy and F1."""

from __future__ import annotations

from typing import Any


class Metric:
    def __init__(self) -> None:
        self.predictions: list[int] = []
        self.references: list[int] = []

    def add_batch(self, predictions: Any, references: Any) -> None:
        self.predictions += [int(p) for p in predictions]
        self.references += [int(r) for r in references]

    def compute(self) -> dict[str, float]:
        pairs = list(zip(self.predictions, self.references))
        self.predictions, self.references = [], []
        tp = sum(p == r == 1 for p, r in pairs)
        fp = sum(p == 1 and r == 0 for p, r in pairs)
        fn = sum(p == 0 and r == 1 for p, r in pairs)
        return {"accuracy": sum(p == r for p, r in pairs) / max(len(pairs), 1),
                "f1": 2 * tp / max(2 * tp + fp + fn, 1), "n": len(pairs),
                # depends on the order the predictions were gathered in, not only on how many are right
                "order": sum((i + 1) * p for i, (p, _) in enumerate(pairs))}


def load(*args: Any, **kwargs: Any) -> Metric:
    return Metric()

"""A plain model definition importable without this library (used by test_checkpoint.py's subprocess)."""

import torch


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(4))
        self.out = torch.nn.Linear(16, 50, bias=False)
        self.out.weight = self.emb.weight

"""Persistence: the one checkpoint format, for both doors (the Trainer and the Accelerator).

    trainer_state.py      the Trainer's checkpoint: what it holds, putting it back, finding one to resume
    accelerator_state.py  Accelerator.save_state / load_state: the same format, for a hand-written loop
    layout.py             the fields of a checkpoint, checked one by one before anything is restored
    weights.py            the full weights of any checkpoint in one process (``trainer merge-weights``)
    kinds.py              what a file that is not the expected checkpoint holds, and the call that loads it
    resume_checks.py      a resumed checkpoint's counters and optimizer settings against the resuming run

Files and directories are written, staged, read, verified and merged by the strategy's checkpoint
format object (``strategy.checkpoint_format``: one file, FSDP's DCP shards, DeepSpeed's engine files;
``trainer.strategies.checkpoint_format``, which also holds the one registry from the name a checkpoint
records to its format), through the atomic writers and the restricted reader of
``trainer.strategies.checkpoint_io`` / ``checkpoint_directories`` / ``checkpoint_verify``. The formats
live in strategies/ because a format needs its strategy's ranks and engine and strategies/ imports
nothing of this side (tests/packaging/test_import_graph.py); code here calls them and never asks which
format it is.
"""

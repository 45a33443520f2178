"""The Accelerate-compatible door, one room: the ``Accelerator`` and what a hand-written loop uses with it.
Users import these under Accelerate's paths (``trainer.accelerator``, ``trainer.data_loader``,
``trainer.logging``, ``trainer.local_sgd``, ``trainer.state``, ``trainer.utils``), which re-export from here."""

"""The Trainer's loops: fit (FitLoop, the state it owns), validate/test/predict, the hooks' order,
preemption, manual optimization, out-of-memory splitting and the notes on errors raised in a step."""

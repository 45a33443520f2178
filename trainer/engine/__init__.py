"""The engine room: what runs a step (``StepEngine``, the optimizer/scheduler reading, gradient state,
torch.compile unwrapping) and how processes start and stop (the script launcher, ``ddp_spawn``, interrupts)."""

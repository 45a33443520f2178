"""What ``Accelerator.prepare`` hands back: thin wrappers that follow the accumulation window."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset

from trainer.engine.step_engine import count_items
from trainer.data.data_position import (SameRandomStreams, capture_epoch_start, order_generators, restore_epoch_start,
                                        rng_states, set_rng_states_after_first, skip_batches)


class AcceleratedOptimizer(torch.optim.Optimizer):
    """An optimizer whose ``step`` and ``zero_grad`` act only on the last micro-step of an
    accumulation window (``accelerator.sync_gradients``), with loss-scaling handled.

    Inside ``accelerator.accumulate()`` the non-final micro-steps only accumulate
    gradients; outside it every call steps. The wrapped optimizer is ``.optimizer``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, accelerator: Any) -> None:
        # Deliberately no super().__init__: this object delegates its state to `optimizer`.
        self.optimizer = optimizer
        self._accelerator = accelerator
        self._gradient_state = accelerator.gradient_state  # read on every step: one lookup, not a property chain
        self.step_was_skipped = False  # the last step's StepResult: skipped (inf/nan gradients under fp16 scaling)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if not self._gradient_state.sync_gradients:
            return
        self.step_was_skipped = not self._accelerator.engine.step(self.optimizer, closure).stepped

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._gradient_state.sync_gradients:
            self._accelerator.engine.zero_grad(self.optimizer, set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:  # torch.optim.Optimizer's keeps only its own fields
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"


class AcceleratedScheduler:
    """A scheduler that follows the optimizer, as under Accelerate (``step_scheduler_with_optimizer``).

    It steps only when the optimizer stepped (not on the non-final micro-steps of a window, nor
    after a step the 16-mixed scaler skipped), and then once per process -- or once when
    ``split_batches=True`` -- so a schedule sized in batches of one process (e.g. ``len(loader)
    * epochs`` before ``prepare``) ends on time under N processes, each of which sees 1/N of the
    batches. With ``step_scheduler_with_optimizer=False`` every call steps.
    """

    def __init__(self, scheduler: Any, accelerator: Any) -> None:
        self.scheduler = scheduler
        self._accelerator = accelerator

    def step(self, *args: Any, **kwargs: Any) -> None:
        accelerator = self._accelerator
        if not accelerator.step_scheduler_with_optimizer:
            self.scheduler.step(*args, **kwargs)
            return
        if not accelerator.sync_gradients or accelerator.optimizer_step_was_skipped:
            return
        total = getattr(self.scheduler, "total_steps", None)  # OneCycleLR refuses to step past its end
        for _ in range(1 if accelerator.split_batches else accelerator.num_processes):
            if total is not None and self.scheduler.last_epoch >= total:
                break
            self.scheduler.step(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":  # not set yet (while unpickling or copying): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.scheduler, name)


class PreparedDataLoader:
    """Yields batches already on the accelerator's device, and tells it which batch is last
    (one batch of look-ahead, ``end_of_dataloader``), so ``accumulate()`` can close the final,
    short window, and how many samples the current batch holds, so the window weights it.

    While it is iterated it is the accelerator's ``gradient_state.active_dataloader``; a loader
    iterated inside another (evaluation inside training) is pushed on top and popped at its end.

    With several processes the loader carries a ``DistributedSampler`` (see
    ``Accelerator.prepare_data_loader``); the sampler's epoch advances on every pass unless the
    user calls ``set_epoch`` themselves, and the wrapper counts this rank's samples so
    ``gather_for_metrics`` can put gathered samples back in sampler order and drop the padding.

    Its ``state_dict`` (saved by ``save_state``) is the epoch of the pass in progress (or of the next
    one) and, inside a pass, the random states its order was drawn from at the pass's start; after
    ``load_state``, ``skip_first_batches`` draws that same order again and the following passes count
    on from that epoch -- with or without ``set_epoch`` or a seedable sampler. ``source`` is the
    loader that ``skip_first_batches`` made this one from: its pass counts as the source's.

    ``stateful`` (``DataLoaderConfiguration(use_stateful_dataloader=True)``): the state also holds the
    position in the pass -- the batches handed out and, for an iterable dataset, its loader's own state
    read as each batch arrives (torchdata's ``StatefulDataLoader``) -- and ``load_state`` makes the next
    pass go on from there, reading nothing trained again; or, loaded by another number of processes,
    read the rest of the pass dealt over them (``load_rest``, trainer/data/sharded_stream.py).
    """

    def __init__(self, loader: Any, accelerator: Any, skipped_samples: int = 0, auto_epoch: bool = True,
                 source: PreparedDataLoader | None = None, skipped_batches: int = 0, stateful: bool = False,
                 position_owner: Any = None) -> None:
        self.loader = loader
        self._accelerator = accelerator
        self.end_of_dataloader = False
        self.remainder = -1  # real samples in the last global batch, when the lengths are known
        self.samples_before = 0  # this rank's samples yielded before the current batch, this pass
        self.batch_len = 0  # samples in the current batch
        self._skipped_samples = skipped_samples
        self._skipped_batches = skipped_batches
        self._auto_epoch = auto_epoch
        self._epoch = 0  # the epoch of the next pass
        self._source = source
        self._pass: dict[str, Any] | None = None  # the pass in progress: its epoch and start states
        self._loaded: dict[str, Any] | None = None  # load_state's, until the next pass: in_pass, epoch_start
        self._stateful = stateful
        # what saves an iterable dataset's position (loader_state.saveable: the loader, or its dataset read in
        # this process), chosen by Accelerator.prepare_data_loader
        self._position_owner = position_owner
        self._position: Any = None  # the owner's state after the batch last handed out

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def padded_sampler(self) -> Any:
        """The ``DistributedSampler`` that pads this loader's last samples, or None."""
        todo = [getattr(self.loader, "batch_sampler", None), getattr(self.loader, "sampler", None)]
        for _ in range(8):  # through BatchSampler and skip_first_batches' wrapper
            if not todo:
                break
            obj = todo.pop()
            if obj is None:
                continue
            if isinstance(obj, torch.utils.data.DistributedSampler):
                return None if obj.drop_last else obj
            todo.append(getattr(obj, "sampler", None))
        return None

    def __iter__(self) -> Iterator[Any]:
        accelerator = self._accelerator
        owner = self._source if self._source is not None else self  # a skip_first_batches loader's pass is its source's
        loaded = owner._begin_pass(self)
        # saved at (or after) a pass's last batch, and this skips batches of that finished pass (the
        # README's loop counts them): it yields nothing and, as the uninterrupted run never made it, it
        # draws nothing and does not count as a pass
        replay = self._source is not None and loaded is not None and not loaded["in_pass"] and self._skipped_batches > 0
        if self._source is not None and loaded is not None:
            if loaded["in_pass"]:  # draw the interrupted pass's order (then the checkpoint's states come back)
                self.loader.before_first_batch = lambda: restore_epoch_start(owner.loader, loaded["epoch_start"])
            elif not replay:  # saved between passes: this pass draws as the uninterrupted run's next pass did
                self.loader.put_back_states = False
        self.remainder = self._remainder()
        self.samples_before = self._skipped_samples
        self.end_of_dataloader = False
        assert owner._pass is not None  # _begin_pass set it
        owner._pass["batches"] = self._skipped_batches
        pairs = self._pass_items(loaded if self._source is None else None, owner._pass)
        accelerator.gradient_state._add_dataloader(self)
        try:
            for batch, is_last in pairs:
                owner._pass["batches"] += 1
                self.end_of_dataloader = is_last
                items = count_items(batch)
                self.batch_len = 1 if items is None else items  # no size: one sample (the engine's policy)
                yield accelerator.batch_to_device(batch)
                self.samples_before += self.batch_len
        finally:
            owner._pass = None
            accelerator.gradient_state._remove_dataloader(self)
        if replay and loaded is not None and self.samples_before == self._skipped_samples and not loaded["epoch_set"]:
            owner._epoch = loaded["epoch"]  # the next pass is the one after the finished pass, as saved

    def _pass_items(self, loaded: dict[str, Any] | None, this_pass: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
        """This pass's ``(batch, is_last)``: from where ``load_state`` left a stateful loader (its position,
        the batches to skip, or the rest dealt over this run's processes), else from the start. A resumed
        pass leaves the random streams load_state put back as they are (the loader's iterator draws its
        seed where the uninterrupted run drew it at the pass's start)."""
        resume = loaded if loaded is not None and loaded["in_pass"] and self._stateful else None
        rest = resume.get("rest") if resume is not None else None
        if rest is not None:  # another number of processes saved it: this rank's part of the rest
            this_pass["rest"] = rest
            accelerator = self._accelerator
            items = rest.weighted(with_is_last(rest.loader(self.loader, rest.start)), accelerator.engine, rest.start,
                                  accelerator.gradient_accumulation_steps)
            return set_rng_states_after_first(items, rng_states())
        source: Any = self.loader
        if resume is not None and resume.get("position") is not None and self._position_owner is not None:
            self._position_owner.load_state_dict(resume["position"])  # reads on from there: nothing again
        elif resume is not None and resume.get("batches") and not isinstance(self.dataset, IterableDataset):
            # a map-style dataset: the pass's order drawn again from its start states, the batches handed out
            # skipped by index (none is read), as skip_first_batches does
            epoch_start, skipped = resume["epoch_start"], int(resume["batches"])
            source = SameRandomStreams(skip_batches(self.loader, skipped))
            source.before_first_batch = lambda: restore_epoch_start(self.loader, epoch_start)
            this_pass["batches"] = skipped
            self.samples_before = skipped * (getattr(self.loader, "batch_size", None) or 0)
            return with_is_last(source)
        owner = self._position_owner
        items = with_is_last(source) if owner is None else self._with_positions(source, owner)
        return items if resume is None else set_rng_states_after_first(items, rng_states())

    def _with_positions(self, source: Any, owner: Any) -> Iterator[tuple[Any, bool]]:
        for (batch, position), is_last in with_is_last((batch, owner.state_dict()) for batch in source):
            self._position = position  # read as the batch arrived, before the look-ahead
            yield batch, is_last

    def _begin_pass(self, iterating: PreparedDataLoader) -> dict[str, Any] | None:
        """Set the sampler's epoch and record the pass (read by ``iterating``: this loader or one
        skip_first_batches made from it); returns the start states load_state gave."""
        epoch = self._epoch
        if self._auto_epoch:
            self._set_sampler_epoch(epoch)
            self._epoch += 1
        loaded, self._loaded = self._loaded, None
        # resumed inside a pass: its start states, so a save inside this pass records them again
        start = loaded.get("epoch_start") if loaded is not None and loaded["in_pass"] else None
        if start is None:  # a fresh pass (or the rest of one another number of processes saved: load_rest)
            start = capture_epoch_start(self.loader)
        self._pass = {"epoch": epoch, "epoch_start": start, "iterating": iterating}
        return loaded

    def state_dict(self) -> dict[str, Any]:
        """Where the passes are: the epoch of the pass in progress (with the random states its order
        was drawn from) or, between passes, of the next one. A state saved while the pass's last
        batch is out (the usual save after a step) counts that pass as done: resumed, the next pass
        is the next epoch's, as in the uninterrupted run."""
        if self._pass is not None and not self._pass["iterating"].end_of_dataloader:
            state = {"epoch": self._pass["epoch"], "in_pass": True, "epoch_start": self._pass["epoch_start"]}
            return {**state, **self._position_state()} if self._stateful else state
        # between passes, the generators the next pass's order comes from (the loader's generator=, or
        # the one a shuffle gets when prepared on several processes) continue from where they are
        state = {"epoch": self._epoch, "in_pass": False,
                 "generators": [g.get_state() for g in order_generators(self.loader)]}
        if self._stateful and self._pass is not None:  # at the pass's last batch: what it read, for a re-deal
            state.update({k: v for k, v in self._position_state().items() if k != "batches"})
        return state

    def _position_state(self) -> dict[str, Any]:
        """A stateful loader's place in the pass in progress: the batches handed out, and the loader's own
        position (an iterable dataset) or, inside a rest re-dealt by load_state, every sample trained."""
        assert self._pass is not None
        batches, rest = self._pass.get("batches", 0), self._pass.get("rest")
        state: dict[str, Any] = {"stateful": True, "batches": batches}
        if rest is not None:
            state["stream_rest"] = rest.state(batches)
        elif self._pass["iterating"]._position is not None:
            state["position"] = self._pass["iterating"]._position
        return state

    @property
    def stateful(self) -> bool:
        """Prepared with ``DataLoaderConfiguration(use_stateful_dataloader=True)``: its state holds its position."""
        return self._stateful

    @property
    def resumes_inside_pass(self) -> bool:
        """load_state put this stateful loader inside a pass: its next pass goes on from there."""
        return self._stateful and self._loaded is not None and self._loaded["in_pass"] and (
            bool(self._loaded.get("batches")) or self._loaded.get("position") is not None
            or self._loaded.get("rest") is not None)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch = state["epoch"]
        self._set_sampler_epoch(self._epoch)
        self._loaded = {"in_pass": bool(state.get("in_pass")), "epoch_start": state.get("epoch_start"),
                        "epoch": self._epoch, "epoch_set": False, "batches": state.get("batches", 0),
                        "position": state.get("position")}
        if not state.get("in_pass"):
            for generator, saved in zip(order_generators(self.loader), state.get("generators") or []):
                generator.set_state(saved)

    def load_rest(self, epoch: int, rest: Any) -> None:
        """Read ``rest`` (a sharded_stream.StreamRest: this rank's part of the rest of pass ``epoch``, which
        another number of processes saved) as the next pass; the passes after it count on from ``epoch``."""
        self.load_state_dict({"epoch": epoch, "in_pass": True})
        assert self._loaded is not None
        self._loaded["rest"] = rest

    def _remainder(self) -> int:
        from trainer.accelerate.data_loader import find_shard

        shard = find_shard(self.loader)
        try:
            total = getattr(shard, "total_batch_size", None) or self._accelerator.num_processes * self.loader.batch_size
            return len(self.loader.dataset) % total
        except (TypeError, AttributeError):
            return -1

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next pass as epoch ``epoch``; later passes count on from it (as Accelerate's
        seedable sampler does). The sampler takes the epoch now, as in Accelerate, so a loader made
        from this one (``skip_first_batches``) reads that epoch's order too."""
        self._auto_epoch = True
        self._epoch = epoch
        self._set_sampler_epoch(epoch)
        if self._loaded is not None:
            self._loaded["epoch_set"] = True

    def _set_sampler_epoch(self, epoch: int) -> None:
        for obj in (getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (while unpickling or copying): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.loader, name)


def with_is_last(iterable: Any) -> Iterator[tuple[Any, bool]]:
    """Yield ``(item, is_last)``, fetching one item ahead."""
    iterator = iter(iterable)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for upcoming in iterator:
        yield current, False
        current = upcoming
    yield current, True

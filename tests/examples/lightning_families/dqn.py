"""DQN family, written as a Lightning user writes it: an agent acting in an environment fills a replay
buffer, an IterableDataset samples from it, ``training_step`` plays one step and returns the loss, and the
target network is synced with the online one every ``sync_rate`` steps.

The environment: a corridor of a few cells in pure Python. The agent starts at the left end, moves left or
right, and is paid at the right end; every other step costs a little. The greedy policy of a trained network
walks right from every cell.

    python dqn.py OUT_DIR

Writes OUT_DIR/result.json (the numbers the test checks) and OUT_DIR/weights.pt (the module's final state).
"""

import json
import os
import random
import sys
from collections import deque, namedtuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, IterableDataset

from lightning.pytorch import LightningModule, Trainer, seed_everything

Experience = namedtuple("Experience", ["state", "action", "reward", "done", "new_state"])


class Corridor:
    """Cells 0..length-1; action 0 steps left, 1 steps right; the right end pays 1 and ends the episode."""

    n_actions = 2

    def __init__(self, length: int = 6, max_steps: int = 20) -> None:
        self.length, self.max_steps = length, max_steps
        self.reset()

    def observe(self):
        return [1.0 if i == self.position else 0.0 for i in range(self.length)]

    def reset(self):
        self.position, self.steps = 0, 0
        return self.observe()

    def sample_action(self) -> int:
        return random.randrange(self.n_actions)

    def step(self, action: int):
        self.steps += 1
        self.position = max(0, self.position - 1) if action == 0 else self.position + 1
        at_goal = self.position == self.length - 1
        reward = 1.0 if at_goal else -0.05
        return self.observe(), reward, at_goal or self.steps >= self.max_steps


class QNetwork(nn.Module):
    def __init__(self, obs_size: int, n_actions: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_size, hidden), nn.ReLU(), nn.Linear(hidden, n_actions))

    def forward(self, x):
        return self.net(x.float())


class ReplayBuffer:
    def __init__(self, capacity: int) -> None:
        self.buffer = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.buffer)

    def append(self, experience: Experience) -> None:
        self.buffer.append(experience)

    def sample(self, size: int):
        chosen = [self.buffer[i] for i in random.sample(range(len(self.buffer)), size)]
        states, actions, rewards, dones, new_states = zip(*chosen)
        return (torch.tensor(states), torch.tensor(actions), torch.tensor(rewards, dtype=torch.float32),
                torch.tensor(dones, dtype=torch.bool), torch.tensor(new_states))


class ReplayDataset(IterableDataset):
    def __init__(self, buffer: ReplayBuffer, sample_size: int) -> None:
        self.buffer, self.sample_size = buffer, sample_size

    def __iter__(self):
        states, actions, rewards, dones, new_states = self.buffer.sample(self.sample_size)
        for i in range(len(dones)):
            yield states[i], actions[i], rewards[i], dones[i], new_states[i]


class Agent:
    def __init__(self, env: Corridor, buffer: ReplayBuffer) -> None:
        self.env, self.buffer = env, buffer
        self.state = env.reset()

    @torch.no_grad()
    def play_step(self, net: nn.Module, epsilon: float):
        if random.random() < epsilon:
            action = self.env.sample_action()
        else:
            action = int(net(torch.tensor([self.state])).argmax(dim=1).item())
        new_state, reward, done = self.env.step(action)
        self.buffer.append(Experience(self.state, action, reward, done, new_state))
        self.state = self.env.reset() if done else new_state
        return reward, done


class DQNLightning(LightningModule):
    def __init__(self, length: int = 6, replay_size: int = 500, warm_start_steps: int = 200, gamma: float = 0.9,
                 eps_start: float = 1.0, eps_end: float = 0.05, eps_last_frame: int = 200, sync_rate: int = 10,
                 lr: float = 1e-2, sample_size: int = 64, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.env = Corridor(length)
        self.net = QNetwork(length, Corridor.n_actions)
        self.target_net = QNetwork(length, Corridor.n_actions)
        self.buffer = ReplayBuffer(replay_size)
        self.agent = Agent(self.env, self.buffer)
        self.episode_reward, self.total_reward = 0.0, 0.0
        self.sync_steps = []
        for _ in range(warm_start_steps):
            self.agent.play_step(self.net, epsilon=1.0)

    def forward(self, x):
        return self.net(x)

    def dqn_mse_loss(self, batch):
        states, actions, rewards, dones, next_states = batch
        q = self.net(states).gather(1, actions.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            next_q = self.target_net(next_states).max(1)[0]
            next_q[dones] = 0.0
        return nn.functional.mse_loss(q, rewards + self.hparams.gamma * next_q)

    def training_step(self, batch, nb_batch):
        hp = self.hparams
        epsilon = max(hp.eps_end, hp.eps_start - (self.global_step + 1) / hp.eps_last_frame)
        reward, done = self.agent.play_step(self.net, epsilon)
        self.episode_reward += reward
        if done:
            self.total_reward, self.episode_reward = self.episode_reward, 0.0
        loss = self.dqn_mse_loss(batch)
        if self.global_step % hp.sync_rate == 0:
            self.target_net.load_state_dict(self.net.state_dict())
            self.sync_steps.append(self.global_step)
        self.log("total_reward", self.total_reward, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return [torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)]

    def train_dataloader(self):
        return DataLoader(ReplayDataset(self.buffer, self.hparams.sample_size), batch_size=self.hparams.batch_size)


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    seed_everything(0)
    model = DQNLightning()
    trainer = Trainer(max_epochs=100, accelerator="cpu", devices=1, val_check_interval=100, default_root_dir=out,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)

    length = model.hparams.length
    with torch.no_grad():
        q = model(torch.eye(length))
    torch.save(model.state_dict(), os.path.join(out, "weights.pt"))
    result = {
        "global_step": trainer.global_step,
        "sync_steps": model.sync_steps,
        "sync_rate": model.hparams.sync_rate,
        "greedy_actions": q.argmax(dim=1)[:-1].tolist(),
        "total_reward": float(trainer.callback_metrics["total_reward"]),
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

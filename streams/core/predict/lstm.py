"""`lstm`: a small recurrent network (PyTorch `nn.LSTM`, CPU) trained online. Pure logic.

Input: the last `seq_len` feature vectors (`features.py`, the same features the ensemble uses,
in a fixed order); output: one value per horizon, the log return over that horizon in
volatility units. One network serves every horizon (shared representation, one forward pass).

Online training, per closed candle: the examples whose horizon has just passed (at most one
per horizon: the window that ended h bars ago, with its realised target) plus `replay` older
examples drawn at random from the last `replay_size` (experience replay: a handful of gradient
steps per candle would otherwise forget within days), `steps` Adam steps on a Huber loss of
the horizons each example has. The cost per candle is therefore fixed: a forward and backward
pass over a batch of at most len(horizons) + `replay` sequences.

Determinism: initial weights from `seed`, replay sampling from a numpy generator whose state
is part of the checkpoint, one intra-op thread (`limit_torch_threads`): the same candles give
the same forecasts, live, replayed or after a restart from a checkpoint.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from streams.core.predict import versions
from streams.core.predict.features import Features


def limit_torch_threads(threads: int = 1) -> None:
    """A network this small gains nothing from intra-op threads, and a worker shares its cores
    with the rest of the pipeline; one thread is also what makes results reproducible."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :])  # type: ignore[no-any-return]


class LstmModel:
    name = "lstm"

    def __init__(self, n_features: int, horizons: Sequence[int], *, seq_len: int = 24, hidden: int = 16,
                 lr: float = 1e-3, steps: int = 1, replay: int = 15, replay_size: int = 2000, seed: int = 7,
                 weight_decay: float = 1e-4) -> None:
        self.n_features = n_features
        self.horizons = tuple(horizons)
        self.seq_len = seq_len
        self.hidden = hidden
        self.lr = lr
        self.steps = steps
        self.replay = replay
        self.replay_size = replay_size
        self.seed = seed
        self.weight_decay = weight_decay
        # Bar vectors by index, enough for the longest horizon's window plus the replay memory.
        self.capacity = seq_len + max(self.horizons) + replay_size + 1
        self.buffer = np.zeros((self.capacity, n_features), dtype=np.float32)
        self.first_index: int | None = None  # first index of the current unbroken run of bars
        self.last_index: int | None = None
        self.memory: deque[tuple[int, int, float]] = deque(maxlen=replay_size)  # (horizon slot, end index, y)
        self.rng = np.random.default_rng(seed)
        self.updates = 0
        self._build()

    @property
    def version(self) -> str:
        return versions.lstm(self.hidden, self.seq_len, self.replay, self.steps)

    def _build(self) -> None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)  # the initial weights depend on the seed only
        self.net = _Net(self.n_features, self.hidden, len(self.horizons))
        torch.random.set_rng_state(generator_state)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.loss = nn.HuberLoss(reduction="none", delta=2.0)

    # --- sequence buffer -----------------------------------------------------------------

    def _window(self, end: int) -> np.ndarray:
        """The `seq_len` vectors ending at bar `end`, zeros before the current run began."""
        start = end - self.seq_len + 1
        first = self.first_index if self.first_index is not None else end + 1
        rows = np.zeros((self.seq_len, self.n_features), dtype=np.float32)
        lo = max(start, first)
        if lo <= end:
            idx = np.arange(lo, end + 1) % self.capacity
            rows[lo - start:] = self.buffer[idx]
        return rows

    def _available(self, end: int) -> bool:
        return (self.first_index is not None and self.last_index is not None
                and self.first_index <= end <= self.last_index and self.last_index - end < self.capacity - self.seq_len)

    # --- model interface -------------------------------------------------------------------

    def predict(self, index: int, features: Features) -> dict[int, float]:
        if self.last_index is None or index != self.last_index + 1:
            self.first_index = index
        self.buffer[index % self.capacity] = features.vector
        self.last_index = index
        with torch.no_grad():
            out = self.net(torch.from_numpy(self._window(index)).unsqueeze(0))[0]
        return {h: float(out[i]) for i, h in enumerate(self.horizons)}

    def learn(self, examples: Sequence[tuple[int, int, Features, float]]) -> None:
        fresh = [(self.horizons.index(h), end, y) for h, end, _, y in examples if self._available(end)]
        self.memory.extend(fresh)
        while self.memory and not self._available(self.memory[0][1]):
            self.memory.popleft()  # its window has left the buffer, or a gap reset the run
        if not fresh:
            return
        batch = list(fresh)
        if self.replay and len(self.memory) > len(fresh):
            older = len(self.memory) - len(fresh)
            picks = self.rng.choice(older, size=min(self.replay, older), replace=False)
            batch.extend(self.memory[int(i)] for i in picks)
        x = torch.from_numpy(np.stack([self._window(end) for _, end, _ in batch]))
        slots = torch.tensor([slot for slot, _, _ in batch])
        target = torch.tensor([y for _, _, y in batch], dtype=torch.float32)
        self.net.train()
        for _ in range(self.steps):
            self.optimizer.zero_grad()
            out = self.net(x).gather(1, slots.unsqueeze(1)).squeeze(1)
            loss = self.loss(out, target).mean()
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
            self.optimizer.step()
        self.net.eval()
        self.updates += 1

    def reset(self) -> None:
        """A gap in the data: no window may span it; the learned weights stay."""
        self.first_index = None
        self.last_index = None
        self.memory.clear()

    # --- checkpoints: state_dicts, not pickled modules -----------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("net", "optimizer", "loss")}
        blob = io.BytesIO()
        torch.save({"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}, blob)
        state["torch"] = blob.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        blob = state.pop("torch")
        self.__dict__.update(state)
        self._build()
        saved = torch.load(io.BytesIO(blob), weights_only=True)
        self.net.load_state_dict(saved["net"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.net.eval()

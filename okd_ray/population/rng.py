"""A private torch RNG stream per population part, so results do not depend on which process hosts it."""

import contextlib

import torch


class PrivateRNG:
    """Runs code under its own CPU (and CUDA) RNG state and keeps that state between calls.

    The local engine hosts every member in one process and the Ray engine one per actor; with a private
    stream, dropout or random init draws the same numbers in both, and a checkpoint captures it exactly.
    """

    def __init__(self, seed: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.state = torch.get_rng_state()
        self.cuda_state: torch.Tensor | None = None

    @contextlib.contextmanager
    def active(self, device: torch.device):
        cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else []):
            torch.set_rng_state(self.state)
            if cuda:
                if self.cuda_state is None:
                    torch.cuda.manual_seed(int(self.state[:8].sum()))
                else:
                    torch.cuda.set_rng_state(self.cuda_state, device)
            yield
            self.state = torch.get_rng_state()
            if cuda:
                self.cuda_state = torch.cuda.get_rng_state(device)

    def state_dict(self) -> dict:
        return {"cpu": self.state, "cuda": self.cuda_state}

    def load_state_dict(self, state: dict) -> None:
        self.state, self.cuda_state = state["cpu"], state["cuda"]

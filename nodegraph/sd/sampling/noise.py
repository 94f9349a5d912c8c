"""Where a sampler's random numbers come from, as ComfyUI draws them, so one seed gives ComfyUI's picture.

- The initial noise is drawn on the CPU in float32 from a generator seeded with the seed, for the whole batch at
  once (or one [1, C, H, W] draw per batch index, when a latent carries batch indices), then moved to the device.
- Ancestral samplers, ddpm and lcm draw each step's noise for the whole batch from a second generator on the latent's
  device, seeded with the seed (seed + 1 on the CPU, so that there the step noise is not the initial noise again).
- SDE samplers draw Brownian increments from a torchsde Brownian tree over [sigma_min, sigma_max], seeded with the
  seed and kept on the CPU (the `_gpu` samplers: on the latent's device), so the path is the same whatever the step
  sizes.
"""

import collections
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (sigma, sigma_next) -> unit-variance noise like x


def initial_noise(shape: Sequence[int], seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """The starting noise for a latent of `shape`, float32 on the CPU.

    With `batch_index`, item k gets the noise of index batch_index[k]: one [1, C, H, W] tensor is drawn per index up
    to the largest, so a picture picked out of a batch keeps the noise it had there.
    """
    generator = torch.Generator("cpu").manual_seed(int(seed))
    shape = tuple(shape)
    if batch_index is None:
        return torch.randn(shape, generator=generator, dtype=torch.float32)
    wanted = [int(i) for i in batch_index]
    if len(wanted) != shape[0] or min(wanted, default=0) < 0:
        raise ValueError(f"batch_index needs one index >= 0 per batch item ({shape[0]}), got {wanted}")
    draws = [torch.randn((1,) + shape[1:], generator=generator, dtype=torch.float32) for _ in range(max(wanted) + 1)]
    return torch.cat([draws[i] for i in wanted])


def step_noise(x: torch.Tensor, seed: int | None) -> NoiseSampler:
    """Fresh Gaussian noise like `x` at each call, from a generator on x's device seeded with `seed` (seed + 1 on the
    CPU, where the initial noise came from `seed`: ComfyUI's rule; on a GPU the generators differ anyway)."""
    generator = None
    if seed is not None:
        seed = int(seed) + (1 if x.device.type == "cpu" else 0)
        generator = torch.Generator(x.device).manual_seed(seed)
    shape, dtype, device = x.shape, x.dtype, x.device
    return lambda sigma, sigma_next: torch.randn(shape, generator=generator, dtype=dtype, device=device)


class BrownianNoise:
    """Brownian-motion increments over sigma: noise(sigma, sigma_next) = (W(sigma_next) - W(sigma)) / sqrt|dsigma|.

    One torchsde Brownian tree for the whole latent (its entropy is the seed), evaluated on the CPU in float32 as
    ComfyUI does, so the same seed gives the same path on any device; with on_cpu=False the tree lives on x's device
    (ComfyUI's `_gpu` samplers: faster there, but another path than the CPU's). `transform` maps sigma to the tree's
    time axis (identity for the samplers here).

    A query costs a few milliseconds at 512x512 (the tree bisects down to its tolerance, drawing noise of the latent's
    size at every level), so a sampler that knows its queries hands them to `prefetch`, and a worker thread answers
    them while the model runs.
    """

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: int | None,
                 transform: Callable[[torch.Tensor], torch.Tensor] = lambda sigma: sigma, on_cpu: bool = True):
        from torchsde import BrownianTree  # only the SDE samplers need it

        self.transform = transform
        t0, t1 = self._as_time(sigma_min), self._as_time(sigma_max)
        self.sign = 1.0
        if t0 > t1:
            t0, t1, self.sign = t1, t0, -1.0
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        self.tree_device = torch.device("cpu") if on_cpu else x.device
        self.tree = BrownianTree(t0.to(self.tree_device), torch.zeros_like(x, device=self.tree_device),
                                 t1.to(self.tree_device), entropy=int(seed))
        self.device, self.dtype = x.device, x.dtype
        self._planned: collections.deque = collections.deque()
        self._answers: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._cancelled = threading.Event()

    def _as_time(self, sigma) -> torch.Tensor:
        return torch.as_tensor(self.transform(torch.as_tensor(sigma))).float()

    def prefetch(self, queries: Iterable[tuple]) -> None:
        """Start answering these (sigma, sigma_next) queries, in this order, on a worker thread. The tree sees the
        same queries in the same order as when they are asked one by one, so the noise is the same; a query that
        is not the next one planned stops the worker and is answered directly."""
        self.close()
        self._planned = collections.deque((float(a), float(b)) for a, b in queries)
        self._answers, self._cancelled = queue.Queue(), threading.Event()
        planned = list(self._planned)

        def answer_all() -> None:
            for key in planned:
                if self._cancelled.is_set():
                    return
                try:
                    self._answers.put((self._increment(*key), None))
                except BaseException as error:  # handed to the sampler's thread, which raises it
                    self._answers.put((None, error))
                    return

        self._worker = threading.Thread(target=answer_all, name="brownian-noise", daemon=True)
        self._worker.start()

    def close(self) -> None:
        """Stop the worker (a run that ends early leaves nothing computing); the tree is the caller's again."""
        if self._worker is not None:
            self._cancelled.set()
            self._worker.join()
            self._worker = None
        self._planned.clear()

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        if self._planned and self._planned[0] == (float(sigma), float(sigma_next)):
            self._planned.popleft()
            increment, error = self._answers.get()
            if error is not None:
                raise error
            return increment
        self.close()
        return self._increment(sigma, sigma_next)

    def _increment(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = self._as_time(sigma), self._as_time(sigma_next)
        sign = self.sign
        if t0 > t1:
            t0, t1, sign = t1, t0, -sign
        with warnings.catch_warnings():
            # torchsde stores the tree's end time rounded and warns (then clamps) when sigma_max is asked for
            warnings.filterwarnings("ignore", message="Should have tb<=t1", category=UserWarning)
            increment = self.tree(t0.to(self.tree_device), t1.to(self.tree_device))
        return increment.to(self.device, self.dtype) * sign / (t1 - t0).abs().sqrt().to(self.device)


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, seed: int | None, on_cpu: bool = True,
                   planned: Iterable[tuple] = ()) -> BrownianNoise:
    """The Brownian noise of an SDE sampler stepping along `sigmas` (its tree spans the positive sigmas); `planned`
    queries are answered ahead on a worker thread."""
    noise = BrownianNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed, on_cpu=on_cpu)
    planned = list(planned)
    if planned:
        noise.prefetch(planned)
    return noise

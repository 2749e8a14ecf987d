"""DP-SGD (Abadi et al., arXiv:1607.00133) via Opacus as an option of the one training loop; stage 3 on uploads.

:class:`DPSGD` is the DP-SGD ``update`` of :func:`veil.models.training.fit`: like Opacus'
``PrivacyEngine`` it attaches per-sample gradients, a ``DPOptimizer`` and an accountant, draws Poisson
batches, and reports epsilon after the run. :func:`fit_private` trains on stored uploads with it.

Each training example is one anonymous upload: (text, label, the one embedding sampled on the phone).
Unlike the simulator's sources, which draw a fresh sample per step, the cloud holds a single sample per
upload, so the embedding of an example is fixed.

DP-SGD, as wired here:

- **Per-sample gradients** come from Opacus' hooks (``GradSampleHooks``), attached to the submodules of
  the :class:`~veil.models.personalization.PersonalizedLM` itself, so the task's own forward paths
  (``classify`` / ``next_token_logits``) run unchanged. Each per-example gradient is clipped to
  ``max_grad_norm``; Gaussian noise of std ``noise_multiplier * max_grad_norm`` is added to the sum,
  which is divided by the expected batch size (``DPOptimizer``), then AdamW steps.
- **LoRA** (``TrainConfig.lora``) is the practical mode: the frozen base (embeddings, RMSNorm, MLP)
  needs no per-sample gradients, only the adapters and the head do. **Full fine-tuning also works**:
  Opacus has no hand-written sampler for ``LlamaRMSNorm`` and falls back to its functorch sampler
  (``torch.func.vmap`` over the layer), and rotary embeddings hold no parameters (checked against a
  naive per-example loop in the tests). It costs ``batch x model size`` of memory, though (135M
  parameters x 32 rows is about 17 GB in fp32), so prefer LoRA beyond tiny models (SmolLM2-135M with
  LoRA: 1.3 s per 4-row step on one CPU thread, under 1 GB; measured). A layer Opacus cannot handle
  (a trainable layer with buffers) raises ``ValueError`` advising LoRA.
- **Sampling**: Poisson sampling with rate ``q = 1 / ceil(n / batch_size)`` for ``epochs * ceil(n /
  batch_size)`` steps, as Opacus' ``DPDataLoader`` does; an empty batch still takes a noise-only step.
  Batch selection and noise use fresh OS entropy, never ``TrainConfig.seed``: the guarantee needs both
  to be secret, so DP runs are not bit-reproducible. Only the cold-start masks follow the seed.
- **Accounting**: add-or-remove-one-*upload* neighbouring relation, i.e. the unit of privacy is one
  upload, not one person: a person with k uploads gets the group-privacy guarantee for k records.
  Rows held out for evaluation are not covered.
- **Trainable embeddings**: :func:`~veil.models.training.fit` takes an ``extra`` module that the embedding source
  reads (the codebook's prototype table, :mod:`veil.models.dp_codebook`); Opacus hooks it beside the
  model, so its per-sample gradients are clipped together with the model's and noised like them.

``TrainConfig.max_grad_norm`` (clipping of the batch gradient) is not used under DP: per-sample clipping
to ``DPConfig.max_grad_norm`` replaces it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from veil.models.personalization import PersonalizedLM
from veil.models.tasks import TokenizedTask
from veil.models.training import TrainConfig, Update, fit, trainable_parameters
from veil.privacy_analysis.accounting import dp_sgd_epsilon

__all__ = [
    "ACCOUNTANTS",
    "DPSGD",
    "DPConfig",
    "DPTrainConfig",
    "DPTrainResult",
    "PrivacyPlan",
    "attach_private",
    "compute_epsilon",
    "default_delta",
    "fit_private",
    "plan_privacy",
    "trainable_parameters",
]

ACCOUNTANTS = ("prv", "rdp")


def default_delta(n_examples: int) -> float:
    """``1 / n**1.1``: below ``1/n`` (which would allow releasing one whole record), as advised for DP-SGD.

    >>> round(default_delta(1000), 8)
    0.00050119
    """
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    return 1.0 / n_examples**1.1


@dataclass
class DPConfig:
    """DP-SGD settings. Give exactly one of ``noise_multiplier`` and ``target_epsilon``."""

    noise_multiplier: float | None = None
    """Noise std as a multiple of ``max_grad_norm`` (sigma); fixed, and epsilon follows from it."""
    target_epsilon: float | None = None
    """Epsilon to reach at the end of training; sigma is found by Opacus' binary search for it."""
    delta: float | None = None
    """Target delta; ``None`` means :func:`default_delta` of the number of training uploads."""
    max_grad_norm: float = 1.0
    """Per-example L2 clipping bound C (over all trainable parameters together)."""
    accountant: str = "prv"
    """``"prv"``: numerical privacy-loss-distribution accountant (Gopi et al., arXiv:2106.02848), tight,
    reports its upper estimate, Opacus' default. ``"rdp"``: Renyi DP (Mironov, arXiv:1702.07476)
    converted with Balle et al. 2020; a looser but classic upper bound."""
    poisson_sampling: bool = True
    """Poisson-sampled batches (what the accountants assume). ``False`` uses shuffled fixed-size batches
    and reports the same accountant's figure, as Opacus does; that figure is then not a proof."""

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(
                "give exactly one of noise_multiplier and target_epsilon, got "
                f"noise_multiplier={self.noise_multiplier}, target_epsilon={self.target_epsilon}"
            )
        if self.noise_multiplier is not None and not (0 < self.noise_multiplier < math.inf):
            raise ValueError(f"noise_multiplier must be > 0 and finite, got {self.noise_multiplier}")
        if self.target_epsilon is not None and not (0 < self.target_epsilon < math.inf):
            raise ValueError(f"target_epsilon must be > 0 and finite, got {self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not (0 < self.max_grad_norm < math.inf):
            raise ValueError(f"max_grad_norm must be > 0 and finite, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")


@dataclass
class DPTrainConfig(TrainConfig):
    """:class:`~veil.models.training.TrainConfig`'s optimisation settings, plus optional DP-SGD.

    Under DP, ``max_grad_norm`` (clipping of the batch gradient) is not used: per-example clipping to
    ``dp.max_grad_norm`` replaces it.
    """

    dp: DPConfig | None = None
    """DP-SGD settings; ``None`` trains without differential privacy."""


@dataclass
class PrivacyPlan:
    """What a DP run will do: sigma, delta, sampling rate and number of steps."""

    noise_multiplier: float
    delta: float
    sample_rate: float
    steps: int
    steps_per_epoch: int
    expected_batch_size: float


@dataclass
class DPTrainResult:
    """Outcome of :func:`fit_private`; the privacy fields are ``None`` without DP.

    ``losses`` holds the mean loss of every step (NaN for an empty Poisson batch).
    """

    losses: list[float]
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    steps: int
    sample_rate: float | None
    accountant: str | None = None

    @classmethod
    def without_dp(cls, losses: list[float]) -> DPTrainResult:
        """The outcome of a run without DP: its losses and number of steps."""
        return cls(losses, None, None, None, len(losses), None)


def compute_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str
) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps, by Opacus' accountant
    (:func:`veil.privacy_analysis.accounting.dp_sgd_epsilon`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PRV at q = 1 takes log(0) on a masked branch
        return dp_sgd_epsilon(noise_multiplier, sample_rate, steps, delta, accountant)


def plan_privacy(dp: DPConfig, n_examples: int, cfg: TrainConfig) -> PrivacyPlan:
    """Resolve sigma (searching for ``target_epsilon`` if given), delta and the sampling schedule.

    Raises
    ------
    ValueError
        If no sigma below Opacus' limit reaches ``target_epsilon``.
    """
    # lazy: Opacus loads only for DP-SGD runs and accounting (start-up time)
    from opacus.accountants.utils import get_noise_multiplier

    per_epoch = math.ceil(n_examples / cfg.batch_size)
    rate, steps = 1.0 / per_epoch, per_epoch * cfg.epochs
    delta = dp.delta if dp.delta is not None else default_delta(n_examples)
    sigma = dp.noise_multiplier
    if sigma is None:
        with warnings.catch_warnings():
            # The search tries huge sigmas, where RDP's best order is the largest one: not a concern.
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=dp.target_epsilon,
                    target_delta=delta,
                    sample_rate=rate,
                    steps=steps,
                    accountant=dp.accountant,
                )
            )
    return PrivacyPlan(sigma, delta, rate, steps, per_epoch, n_examples * rate)


def _secret_generator(device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(os.urandom(8), "little"))
    return gen


def attach_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator | None = None,
) -> tuple[Any, Any]:
    """Opacus per-sample gradient hooks on ``model`` and a ``DPOptimizer`` around ``optimizer``.

    Backpropagate the *sum* of per-row losses; ``DPOptimizer.step`` then clips each row's gradient to
    ``max_grad_norm``, adds noise, divides by ``expected_batch_size`` and steps. Call
    ``hooks.cleanup()`` when done (this also removes the ``grad_sample`` attributes).

    Returns
    -------
    (GradSampleHooks, DPOptimizer)

    Raises
    ------
    ValueError
        If Opacus cannot compute per-sample gradients of a trainable layer (use LoRA then).
    """
    # lazy: Opacus loads only for DP-SGD runs and accounting (start-up time)
    from opacus.grad_sample import GradSampleHooks
    from opacus.optimizers import DPOptimizer

    try:
        hooks = GradSampleHooks(model, batch_first=True, loss_reduction="sum", strict=True)
    except NotImplementedError as err:
        raise ValueError(
            f"Opacus cannot compute per-sample gradients for a trainable layer of this model ({err}); "
            "train with LoRA adapters (TrainConfig.lora) so that only linear layers train"
        ) from err
    dp_optim = DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,  # type: ignore[arg-type]  # a float mean is fine
        loss_reduction="mean",
        generator=generator,
    )
    return hooks, dp_optim


def _tidy(model: nn.Module, hooks: Any) -> None:
    hooks.cleanup()  # removes the hooks and Opacus' per-parameter attributes
    for p in model.parameters():
        if hasattr(p, "summed_grad"):
            del p.summed_grad
        p.grad = None
    for m in model.modules():  # activations of a forward whose backward never ran
        for attr in ("activations", "max_batch_len"):
            if hasattr(m, attr):
                delattr(m, attr)


class DPSGD(Update):
    """DP-SGD as the update of :func:`veil.models.training.fit`: Poisson batches, per-example clipping, noise.

    A stateful component in the manner of Opacus' ``PrivacyEngine``: :meth:`attach` resolves sigma
    (:func:`plan_privacy`), hooks per-sample gradients onto the trained module, wraps the optimiser in a
    ``DPOptimizer`` and starts an accountant that sees every step; :meth:`result` reads epsilon after the
    run. Batch selection and noise draw fresh OS entropy, never ``TrainConfig.seed``.

    >>> update = DPSGD(DPConfig(noise_multiplier=1.0))  # then fit(..., update=update); update.result(losses)
    """

    def __init__(self, config: DPConfig) -> None:
        super().__init__()
        self.config = config
        self.plan: PrivacyPlan | None = None
        self._hooks: Any = None
        self._accountant: Any = None

    def attach(self, module: nn.Module, optimizer: Any, n_examples: int, cfg: TrainConfig) -> Any:
        """Per-sample gradient hooks on ``module``; returns the ``DPOptimizer`` around ``optimizer``."""
        # lazy: Opacus loads only for DP-SGD runs and accounting (start-up time)
        from opacus.accountants import create_accountant

        plan = plan_privacy(self.config, n_examples, cfg)
        self._hooks, optimizer = attach_private(
            module,
            optimizer,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=self.config.max_grad_norm,
            expected_batch_size=plan.expected_batch_size,
            generator=_secret_generator(next(module.parameters()).device),
        )
        accountant = create_accountant(mechanism=self.config.accountant)
        sigma, rate = plan.noise_multiplier, plan.sample_rate
        optimizer.attach_step_hook(lambda _: accountant.step(noise_multiplier=sigma, sample_rate=rate))
        self.plan, self._accountant = plan, accountant
        # Batch membership must stay secret for amplification by subsampling: OS entropy, not the seed.
        self.rng = np.random.default_rng()
        return optimizer

    def batches(
        self, indices: np.ndarray, cfg: TrainConfig, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        """Poisson sampling: each example joins each of the epoch's steps with probability ``q``."""
        if self.plan is None or not self.config.poisson_sampling:
            yield from super().batches(indices, cfg, rng)
            return
        for _ in range(self.plan.steps_per_epoch):
            yield indices[self.rng.random(indices.size) < self.plan.sample_rate]  # type: ignore[union-attr]

    def step(self, optimizer: Any, params: list[nn.Parameter], rows: Tensor | None, cfg: TrainConfig) -> None:
        """Backpropagate the *sum* of row losses; ``DPOptimizer`` clips per row, adds noise, averages."""
        if rows is None:
            # An empty Poisson batch still releases noise: skipping it would reveal that the batch was empty.
            for p in params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]
        else:
            rows.sum().backward()  # per-row gradients; DPOptimizer averages over the expected batch size
        optimizer.step()

    def detach(self, module: nn.Module) -> None:
        """Remove the hooks and Opacus' attributes, so the module trains and infers as a plain one again."""
        if self._hooks is not None:
            _tidy(module, self._hooks)
            self._hooks = None

    def result(self, losses: list[float]) -> DPTrainResult:
        """The run's losses with its (epsilon, delta), sigma, sampling rate and accountant."""
        if self.plan is None or self._accountant is None:
            raise ValueError("DPSGD.result needs a finished run: pass this DPSGD to fit(update=...) first")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # PRV at q = 1 takes log(0) on a masked branch
            epsilon = float(self._accountant.get_epsilon(delta=self.plan.delta))
        plan = self.plan
        return DPTrainResult(
            losses,
            epsilon,
            plan.delta,
            plan.noise_multiplier,
            len(losses),
            plan.sample_rate,
            self.config.accountant,
        )


def fit_private(
    model: PersonalizedLM,
    data: TokenizedTask,
    indices: Sequence[int] | np.ndarray,
    cfg: TrainConfig,
    dp: DPConfig | None,
    embeddings: np.ndarray | None = None,
    has: np.ndarray | None = None,
    on_step: Callable[[float], None] | None = None,
) -> DPTrainResult:
    """Train on ``data[indices]`` with one fixed embedding per example, with DP-SGD unless ``dp`` is None.

    Parameters
    ----------
    embeddings:
        ``(len(data), n_tokens, hidden)``: the sample uploaded with each example, or ``None`` to train
        the population model only.
    has:
        ``(len(data),)`` bool: False for examples uploaded without an embedding (trained as cold-start
        rows); default all True. A further ``cfg.cold_start_fraction`` of rows drops its embedding.
    on_step:
        Called with each step's mean loss.

    This is :func:`veil.models.training.fit` with a source returning the stored embeddings and, with
    ``dp``, the :class:`DPSGD` update.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError("no training examples")
    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        want = (len(data), *model.embedding_shape)
        if embeddings.shape != want:
            raise ValueError(f"embeddings must have shape {want}, got {embeddings.shape}")
    if has is not None:
        has = np.asarray(has, dtype=bool)
        if has.shape != (len(data),):
            raise ValueError(f"has must have shape ({len(data)},), got {has.shape}")
    stored = embeddings
    source = None if stored is None else (lambda idx: stored[idx])
    if dp is not None:
        private = DPSGD(dp)
        return private.result(fit(model, data, indices, cfg, source, on_step, has=has, update=private))
    # Runs with uploads lacking an embedding draw their batch order from a generator of their own (as
    # they always have, so a seed reproduces the same run); the others share fit's.
    mixed = source is not None and has is not None and not has[indices].all()
    update = Update(np.random.default_rng(cfg.seed)) if mixed else Update()
    return DPTrainResult.without_dp(fit(model, data, indices, cfg, source, on_step, has=has, update=update))

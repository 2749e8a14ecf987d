"""The Python reference client: what a phone app does, end to end (see ``PROTOCOL.md`` beside this file).

:class:`VeilClient` keeps the private parameters on disk (:class:`~veil.client_sdk.param_store.ParamStore`),
draws a fresh sample for every request, checks the device's privacy policy first, sends the phone routes
through an Oblivious HTTP relay (:class:`~veil.client_sdk.api.PhoneAPI` over
:class:`~veil.client_sdk.ohttp.AsyncOHTTPClient`), learns from returned gradients, uploads with
idempotency keys and chats. Its math (sample, parameter update, policy check) goes through an injected
:class:`MathBackend`: :class:`NumpyBackend` here (the distributions and ``OnDeviceLearner``), or the ONNX
graphs that apps embed.

Guarantees
----------
* Parameters change only after a whole step succeeded: gradient received and valid, update computed,
  policy met, file written atomically. Any failure leaves memory and disk as they were.
* Every request is safe to retry, and is retried (bounded, exponential backoff with full jitter, the
  relay's ``retry-after`` honoured: :class:`~veil.client_sdk.retry.RetryPolicy`) after a transport
  failure, a relay 429, a 5xx, or a response that did not open or parse: an upload keeps its
  idempotency key *and its body* across retries, so it is stored once. This client is the one layer
  that retries: :class:`~veil.client_sdk.api.PhoneAPI` never does, and a transport that retries itself
  is refused, so a failing relay sees exactly ``1 + RetryPolicy.retries`` attempts.
* Nothing identifying is sent: no ids, no cookies, no stable keys; every sample and every HPKE
  encapsulation is fresh (a retry re-encapsulates the same inner request).
* Nothing is sealed to a key the gateway did not sign (``PROTOCOL.md`` 2.4): the key configuration must
  carry the gateway's signature under the key the app ships, or the one pinned on first use; otherwise
  :class:`~veil.client_sdk.ohttp.errors.KeyConfigSignatureError` is raised and not retried.
* With a prototype codebook (``PROTOCOL.md`` 5.5) the choice is made on the phone from loss requests
  (:meth:`VeilClient.choose_prototype`), and every request that carries a sample of it names the stored
  choice's codebook version: the cloud refuses another version than the published one (409) before it
  stores or computes anything, and the client raises :class:`CodebookMismatchError`; the caller chooses
  again explicitly. Nothing is re-chosen, resampled or resent behind its back.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np

from veil.client_sdk.api import MAX_TOP_K, AsyncTransport, PhoneAPI, VeilAPIError, new_idempotency_key
from veil.client_sdk.constants import MAX_LABELS
from veil.client_sdk.distributions.base import UserDistribution
from veil.client_sdk.distributions.prototype import (
    DEFAULT_NOISE_STD,
    Codebook,
    CodebookMismatchError,
    PrototypeDistribution,
)
from veil.client_sdk.math_backends import Draw, LearningConfig, MathBackend, NumpyBackend, OnnxBackend
from veil.client_sdk.ohttp.client import AsyncOHTTPClient, RelayError
from veil.client_sdk.ohttp.errors import DecryptionFailedError, KeyConfigError, MalformedMessageError
from veil.client_sdk.param_store import (
    ClientState,
    FamilyMismatchError,
    MemoryParamStore,
    ParamStore,
    ParamStoreError,
)
from veil.client_sdk.policy_guard import PolicyCheck, PolicyViolationError
from veil.client_sdk.private_head import PrivateHead
from veil.client_sdk.prototype_choice import Example, PrototypeChoice, prototype_losses
from veil.client_sdk.retry import RetryPolicy
from veil.client_sdk.runtime.generate import SamplingParams
from veil.client_sdk.runtime.manifest import read_manifest

__all__ = [
    "CodebookMismatchError",
    "Draw",
    "FamilyMismatchError",
    "InvalidResponseError",
    "LearnResult",
    "LearningConfig",
    "MathBackend",
    "ModelMismatchError",
    "NumpyBackend",
    "OnnxBackend",
    "PrototypeChoice",
    "RetryPolicy",
    "VeilClient",
    "VeilClientError",
    "secure_rng",
]

T = TypeVar("T")


class VeilClientError(Exception):
    """Base class of the reference client's own errors."""


class InvalidResponseError(VeilClientError):
    """The service answered, but not with the documented shape (missing field, wrong shape, NaN)."""


class ModelMismatchError(VeilClientError):
    """The served model or its ``embedding_shape`` does not match the stored parameters."""


def secure_rng() -> np.random.Generator:
    """A generator seeded with 128 bits from the OS's secure source; a fresh one for every sample, so
    the cloud cannot predict one sample from others even if it could invert numpy's PCG64."""
    return np.random.default_rng(secrets.randbits(128))


def _retryable(exc: Exception) -> bool:
    """Failures after which the same request may succeed (every phone route is safe to resend)."""
    if isinstance(exc, RelayError):
        # Key problems are not here: the transport already refetched the keys once for this request.
        status = exc.status_code
        return status is None or status >= 500 or status == 429 or exc.error_type == "ohttp_decryption_failed"
    if isinstance(exc, VeilAPIError):
        return exc.status >= 500 or exc.type == "invalid_response"
    # The response (or the key list) was altered or garbled on the way.
    return isinstance(
        exc, DecryptionFailedError | MalformedMessageError | KeyConfigError | InvalidResponseError
    )


@dataclass(frozen=True)
class LearnResult:
    """The outcome of one learning step."""

    loss: float
    steps: int
    """Steps taken so far, this one included."""
    policy: PolicyCheck


class VeilClient:
    """A phone's Veil client.

    Parameters
    ----------
    transport : AsyncTransport
        Sends inner requests (an :class:`AsyncOHTTPClient` through a relay; see :meth:`through_relay`).
    store : ParamStore
        Where the parameters live.
    model : str
        The served model id (``/v1/models``).
    backend : MathBackend, optional
        Sampling, update and policy; default :class:`NumpyBackend` without a policy.
    rng : callable returning a numpy Generator, optional
        Source of sampling randomness; default :func:`secure_rng` (tests pass a seeded one).
    retry : RetryPolicy, optional
        Retries of every route.
    local_lm : veil.client_sdk.runtime.generate.OnnxLM, optional
        The on-device language model (``veil export-onnx --lm``) for :meth:`generate_locally`.
    family : str, optional
        The distribution family this app uses (e.g. ``"prototype"``); a stored file of another family
        raises :class:`FamilyMismatchError` naming both. ``None`` accepts any family.
    max_in_flight : int
        Most loss requests outstanding at once while choosing a prototype.
    """

    def __init__(
        self,
        transport: AsyncTransport,
        store: ParamStore,
        *,
        model: str,
        backend: MathBackend | None = None,
        rng: Callable[[], np.random.Generator] = secure_rng,
        retry: RetryPolicy | None = None,
        local_lm: Any = None,
        family: str | None = None,
        max_in_flight: int = 8,
    ) -> None:
        if not model:
            raise ValueError("model must be a non-empty model id")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if getattr(transport, "retries", 0):
            raise ValueError(
                f"the transport retries by itself (retries={transport.retries}): give it retries=0, since "  # type: ignore[attr-defined]
                "VeilClient is the one layer that retries (RetryPolicy), and attempts would multiply"
            )
        self.api = PhoneAPI(transport, model)  # it never retries: that happens here, around whole exchanges
        self.transport = transport
        self.store = store
        self.model = model
        self.backend: MathBackend = backend or NumpyBackend()
        self.retry = retry or RetryPolicy()
        self.local_lm = local_lm
        self.family = family
        self.max_in_flight = max_in_flight
        self._rng = rng
        self._state: ClientState | None = None
        self._lock = asyncio.Lock()
        self._owns_transport = False

    @classmethod
    def through_relay(
        cls,
        relay_url: str,
        store: ParamStore,
        *,
        model: str,
        key_config_url: str | None = None,
        timeout_s: float = 30.0,
        gateway_public_key: bytes | str | Sequence[bytes | str] | None = None,
        model_dir: str | os.PathLike[str] | None = None,
        pin_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> VeilClient:
        """A client with its own :class:`AsyncOHTTPClient`; ``key_config_url`` defaults to the relay's
        ``/.well-known/ohttp-gateway`` when ``relay_url`` ends in ``/ohttp``.

        Key configurations are used only when signed by the gateway (``PROTOCOL.md``, key configuration
        authentication): by ``gateway_public_key`` when given, else by the key in the ONNX manifest of
        ``model_dir`` (default: the folder of an :class:`OnnxBackend` given as ``backend``; written by
        ``veil export-onnx --gateway-public-key``), else by the key pinned on first use, kept
        in ``pin_path`` (default: beside the parameter file, ``<params>.gateway-key``; in memory for a
        :class:`~veil.client_sdk.param_store.MemoryParamStore`).
        """
        if model_dir is None:
            model_dir = getattr(kwargs.get("backend"), "model_dir", None)  # OnnxBackend's graph folder
        if gateway_public_key is None and model_dir is not None:
            gateway_public_key = read_manifest(model_dir).gateway_public_key
        if gateway_public_key is None and pin_path is None and not isinstance(store, MemoryParamStore):
            pin_path = store.path.with_name(store.path.name + ".gateway-key")
        if key_config_url is None:
            if not relay_url.rstrip("/").endswith("/ohttp"):
                raise ValueError(f"give key_config_url: cannot derive it from {relay_url!r}")
            key_config_url = relay_url.rstrip("/")[: -len("/ohttp")] + "/.well-known/ohttp-gateway"
        # The transport makes one attempt per call (connect errors aside); this client retries.
        transport = AsyncOHTTPClient(
            relay_url,
            key_config_url=key_config_url,
            timeout=timeout_s,
            retries=0,
            gateway_public_key=gateway_public_key,
            pin_path=pin_path,
        )
        client = cls(transport, store, model=model, **kwargs)
        client._owns_transport = True
        return client

    async def aclose(self) -> None:
        if self._owns_transport:
            await self.transport.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> VeilClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ parameters
    def initialise(self, prior: UserDistribution, *, overwrite: bool = False) -> ClientState:
        """Write the first parameter file: the population prior, for this model."""
        if self.store.exists() and not overwrite:
            raise FileExistsError(f"{self.store.path} exists; pass overwrite=True to start again")
        self._check_family(prior.family)
        state = ClientState(prior, {}, self.model)
        self._enforce(state.distribution)
        self.store.save(state)
        self._state = state
        return state

    @property
    def state(self) -> ClientState:
        """The current parameters (read from disk on first use and checked against the policy).

        Raises
        ------
        ParamStoreError
            Missing, corrupt or undecryptable file.
        ModelMismatchError
            The file was learnt for another model.
        FamilyMismatchError
            The file holds another family than ``family``.
        PolicyViolationError
            The stored parameters break the device's policy.
        """
        if self._state is None:
            state = self.store.load(self.family)
            if state.model is not None and state.model != self.model:
                raise ModelMismatchError(
                    f"{self.store.path} holds parameters for {state.model!r}, not {self.model!r}"
                )
            self._enforce(state.distribution)
            self._state = state
        return self._state

    def _check_family(self, family: str) -> None:
        if self.family is not None and family != self.family:
            raise FamilyMismatchError(f"this client uses the {self.family!r} family, not {family!r}")

    def _enforce(self, distribution: UserDistribution) -> PolicyCheck:
        check = self.backend.check(distribution)
        if not check.ok:
            raise PolicyViolationError(
                f"{check.measure} = {check.value:.4g} exceeds the limit {check.limit:.4g}"
            )
        return check

    def draw(self) -> Draw:
        """A fresh sample of the current parameters (and its noise), after the policy check."""
        distribution = self.state.distribution
        self._enforce(distribution)
        return self.backend.sample(distribution, self._rng())

    def sample(self) -> np.ndarray:
        """A fresh sample of the current parameters, shape ``(n_tokens, dim)``, after the policy check."""
        return self.draw().value

    def generate_locally(
        self, prompt: Sequence[int] | str, *, personalised: bool = True, max_new_tokens: int = 32
    ) -> str:
        """Answer on the phone with the local ONNX model, the fresh sample as soft-token prefix.

        Nothing leaves the device. Raises :class:`VeilClientError` without a ``local_lm`` or when its
        width differs from the distribution's.
        """
        if self.local_lm is None:
            raise VeilClientError("no local model: pass local_lm=OnnxLM(<export-onnx folder>)")
        prefix = self.sample() if personalised else None
        if prefix is not None and prefix.shape[-1] != self.local_lm.spec.hidden_size:
            raise VeilClientError(
                f"the distribution's width {prefix.shape[-1]} is not the local model's {self.local_lm.spec.hidden_size}"
            )
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
        tokens, _ = self.local_lm.generate(
            prompt, None if prefix is None else prefix.astype(np.float32), params
        )
        return self.local_lm.decode(tokens)

    # ------------------------------------------------------------------ routes
    async def _with_retries(self, send: Callable[[], Awaitable[T]]) -> T:
        attempt, waited = 0, 0.0
        while True:
            try:
                return await send()
            except Exception as exc:  # noqa: BLE001 - filtered right below
                if not _retryable(exc):
                    raise
                pause = self.retry.next_pause(attempt, waited, getattr(exc, "retry_after", None))
                if pause is None:
                    raise
            await asyncio.sleep(pause)
            attempt, waited = attempt + 1, waited + pause

    def _choice_version(self) -> str | None:
        """The codebook version of a stored prototype choice, which every request carrying a sample of it
        names; ``None`` for other families (their requests name none)."""
        distribution = self.state.distribution
        if "choose" not in distribution.capabilities:
            return None
        return cast(PrototypeDistribution, distribution).codebook.version

    async def _send(self, send: Callable[[], Awaitable[T]], version: str | None) -> T:
        """``send`` with retries; the cloud's refusal of ``version`` (``409 codebook_version_mismatch``)
        becomes :class:`CodebookMismatchError` naming both versions (the published one is in its
        message). It is not retried: the stored choice is stale until the caller chooses again."""
        try:
            return await self._with_retries(send)
        except VeilAPIError as exc:
            if version is None or exc.code != "codebook_version_mismatch":
                raise
            raise CodebookMismatchError(
                f"parameters were chosen against codebook {version}, which the cloud refused: {exc.message}"
            ) from exc

    async def discover(self) -> dict[str, Any]:
        """The model card (``GET /v1/models``); checks that it serves this model with our sample shape."""

        async def fetch() -> list[Any]:
            try:
                cards = await self.api.models()
            except (KeyError, TypeError) as exc:
                raise InvalidResponseError(f"model list is malformed: {exc!r}") from exc
            if not isinstance(cards, list):
                raise InvalidResponseError(f"model list is malformed: {cards!r}")
            return cards

        cards = await self._with_retries(fetch)
        card = next((c for c in cards if isinstance(c, dict) and c.get("id") == self.model), None)
        if card is None:
            raise ModelMismatchError(f"the service does not serve {self.model!r}")
        shape = tuple(card.get("embedding_shape") or ())
        if shape != self.state.distribution.shape:
            raise ModelMismatchError(
                f"{self.model!r} takes embeddings of shape {list(shape)}, the parameters sample "
                f"{list(self.state.distribution.shape)}"
            )
        return card

    async def learn(self, task: str, text: str, label: str) -> LearnResult:
        """One gradient-return step: sample, ask for dL/de, update, check, save (all or nothing)."""
        return await self.learn_batch([(task, text, label)])

    async def learn_batch(self, examples: Sequence[Example]) -> LearnResult:
        """One gradient-return step on a batch (all or nothing): a fresh sample per example, their dL/de
        asked concurrently (at most ``max_in_flight`` at once), one update with the mean gradient; the
        result's ``loss`` is the batch's mean."""
        if not examples:
            raise ValueError("learn_batch needs at least one example")
        async with self._lock:  # one step at a time: each update starts from the last saved state
            state = self.state
            if "learn" not in state.distribution.capabilities:
                raise VeilClientError(
                    f"a {state.distribution.family} choice has no gradient steps: use choose_prototype"
                )
            draws = [self.draw() for _ in examples]
            slots = asyncio.Semaphore(self.max_in_flight)

            async def exchange(example: Example, x: np.ndarray) -> tuple[float, np.ndarray]:
                task, text, label = example
                try:
                    loss, grad = await self.api.embedding_gradient(task, text, label, x)
                except (KeyError, TypeError, ValueError) as exc:
                    raise InvalidResponseError(f"gradient response is malformed: {exc!r}") from exc
                if grad.shape != x.shape or not np.isfinite(grad).all() or not math.isfinite(loss):
                    raise InvalidResponseError(
                        f"gradient must be finite with shape {list(x.shape)}, got {list(grad.shape)}"
                    )
                return loss, grad

            async def one(example: Example, x: np.ndarray) -> tuple[float, np.ndarray]:
                async with slots:
                    return await self._with_retries(lambda: exchange(example, x))

            answers = await asyncio.gather(*[one(e, d.value) for e, d in zip(examples, draws, strict=True)])
            grad = np.stack([g for _, g in answers]) / len(examples)
            new = self.backend.update(state, Draw.stack(draws), grad)
            check = self._enforce(new.distribution)
            self.store.save(new)  # raises before anything changes in memory
            self._state = new
            return LearnResult(float(np.mean([v for v, _ in answers])), new.steps, check)

    async def predict(self, task: str, text: str, labels: Sequence[str]) -> str:
        """The label the personalised model finds likeliest for ``text``, asked from the phone.

        One fresh sample of the current parameters is drawn (checked against the policy) and one request
        (``/v1/label-losses``) asks for every candidate label's loss under it; the lowest loss wins (ties:
        the first label). This is how a phone measures personalised accuracy on its own held-out
        examples without a local model. A stale prototype choice raises :class:`CodebookMismatchError`.

        Parameters
        ----------
        labels : 1 to 32 distinct candidates.
        """
        if not 1 <= len(labels) <= MAX_LABELS or len(set(labels)) != len(labels):
            raise ValueError(
                f"labels must be 1 to {MAX_LABELS} distinct candidates, got {list(labels)!r:.200}"
            )
        x, version = self.sample(), self._choice_version()

        async def exchange() -> np.ndarray:
            try:
                return await self.api.label_losses(task, text, labels, x, codebook_version=version)
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidResponseError(f"label losses are malformed: {exc!r}") from exc

        losses = await self._send(exchange, version)
        return labels[int(np.argmin(losses))]

    async def mean_loss(self, examples: Sequence[Example]) -> float:
        """The cloud's mean loss over ``examples``, each under a fresh sample of the current parameters
        (a phone's validation loss; loss requests only, nothing changes). A stale prototype choice
        raises :class:`CodebookMismatchError`."""
        if not examples:
            raise ValueError("mean_loss needs at least one example")
        version = self._choice_version()
        slots = asyncio.Semaphore(self.max_in_flight)

        async def one(task: str, text: str, label: str) -> float:
            async with slots:
                return await self._loss(task, text, label, self.sample(), version)

        return float(np.mean(await asyncio.gather(*[one(*e) for e in examples])))

    async def _loss(self, task: str, text: str, label: str, e: np.ndarray, version: str | None) -> float:
        """The cloud's loss of ``(text, label)`` under embedding ``e``: one loss request, retried."""

        async def exchange() -> float:
            try:
                value = await self.api.loss(task, text, label, e, codebook_version=version)
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidResponseError(f"loss response is malformed: {exc!r}") from exc
            if not math.isfinite(value):
                raise InvalidResponseError(f"loss must be finite, got {value}")
            return value

        return await self._send(exchange, version)

    async def upload(
        self, task: str, text: str, label: str | None = None, *, with_embedding: bool = True
    ) -> dict[str, Any]:
        """Store one anonymous example (``{"id", "object", "status"}``); retried with the same key and body.

        Raises :class:`CodebookMismatchError` when the cloud refused the stored prototype choice's
        codebook version (nothing was stored; choose again with :meth:`choose_prototype`).
        """
        embedding = self.sample() if with_embedding else None
        version = self._choice_version() if with_embedding else None
        key = new_idempotency_key()

        async def send() -> dict[str, Any]:
            out = await self.api.upload(
                task, text, label, embedding, idempotency_key=key, codebook_version=version
            )
            if not isinstance(out, dict) or out.get("status") not in ("created", "duplicate"):
                raise InvalidResponseError(f"upload answer is malformed: {out!r}")
            return out

        return await self._send(send, version)

    async def chat(
        self, messages: Sequence[dict[str, str]], *, personalised: bool = True, **params: Any
    ) -> str:
        """A completion, personalised with a fresh sample unless ``personalised=False``.

        ``params`` pass through (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``); OpenAI's
        ``user`` is refused, since it exists to identify people. A personalised chat with a stale
        prototype choice raises :class:`CodebookMismatchError`.
        """
        if params.keys() & {"user", "user_embedding", "user_embedding_b64", "codebook_version"}:
            raise ValueError(
                "pass no 'user', 'user_embedding' or 'codebook_version': the client sends a fresh sample, "
                "and its codebook version, itself"
            )
        embedding = self.sample() if personalised else None
        version = self._choice_version() if personalised else None

        async def send() -> str:
            try:
                return await self.api.chat(messages, embedding, codebook_version=version, **params)
            except (KeyError, TypeError, IndexError) as exc:
                raise InvalidResponseError(f"chat answer is malformed: {exc!r}") from exc

        return await self._send(send, version)

    async def translate(
        self,
        text: str,
        source_language: str,
        target_language: str,
        *,
        mode: str = "direct",
        documents: Sequence[str] | None = None,
        personalised: bool = True,
    ) -> dict[str, Any]:
        """A translation (``/v1/translations``), personalised with a fresh sample unless
        ``personalised=False``: ``{"translation", "mode", "thought", "documents_used"}``.

        ``mode``: ``direct``, ``long_thought`` (the answer's ``thought`` holds the rounds) or ``document``
        (``documents`` in any supported language; ``documents_used`` lists the ones judged relevant).
        """
        embedding = self.sample() if personalised else None
        version = self._choice_version() if personalised else None

        async def send() -> dict[str, Any]:
            out = await self.api.translate(
                text, source_language, target_language, mode=mode, documents=documents,
                embedding=embedding, codebook_version=version,
            )  # fmt: skip
            if not isinstance(out, dict) or not isinstance(out.get("translation"), str):
                raise InvalidResponseError(f"translation answer is malformed: {out!r}")
            return out

        return await self._send(send, version)

    async def mixed_next_token(
        self,
        messages: Sequence[dict[str, str]],
        head: PrivateHead,
        *,
        top_k: int = 20,
        prototypes: Sequence[int] | None = None,
    ) -> int:
        """Private mixing's next token: the cloud's top-k under public prototypes, mixed by ``head``.

        Asks for the answers under the phone's own prototype, or under ``prototypes`` (codebook indices,
        e.g. its best few by its own losses), naming the stored choice's codebook version (as
        :meth:`chat` does: a stale one raises :class:`CodebookMismatchError`); nothing private is sent,
        and ``head`` stays here.

        Parameters
        ----------
        messages : the chat so far.
        head : the phone's private head, with one mixture logit per requested prototype.
        top_k : candidates per prototype, 1..20.
        prototypes : codebook indices to ask under (default: the stored choice's own).
        """
        distribution = cast(PrototypeDistribution, self.state.distribution)
        if "choose" not in distribution.capabilities:
            raise VeilClientError("private mixing needs a prototype choice: call choose_prototype first")
        if not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be in [1, {MAX_TOP_K}], got {top_k}")
        book = distribution.codebook
        asked = np.asarray([distribution.index] if prototypes is None else list(prototypes), dtype=np.int64)
        if asked.size < 1 or np.any((asked < 0) | (asked >= book.size)) or not book.active[asked].all():
            raise ValueError(f"prototypes must be usable indices of codebook {book.version}, got {asked}")
        if head.logits.shape != (asked.size,):
            raise ValueError(f"head mixes {head.logits.size} prototypes, asked for {asked.size}")

        async def send() -> int:
            try:
                answers = await self.api.prototype_answers(
                    messages, book.prototypes[asked], top_k, codebook_version=book.version
                )
            except (KeyError, TypeError, IndexError, ValueError) as exc:
                raise InvalidResponseError(f"prototype answers are malformed: {exc}") from exc
            return int(head.predict(answers)[0])

        return await self._send(send, book.version)

    # ------------------------------------------------------------------ prototype codebook
    async def codebook(self) -> Codebook:
        """The cloud's current codebook (``GET /v1/codebook``), its version verified.

        Raises :class:`~veil.client_sdk.api.VeilAPIError` (404) when none is published.
        """

        async def fetch() -> Codebook:
            try:
                return await self.api.codebook()
            except (KeyError, TypeError, ValueError) as exc:  # CodebookFormatError is a ValueError
                raise InvalidResponseError(f"codebook answer is malformed: {exc}") from exc

        return await self._with_retries(fetch)

    async def check_codebook(self) -> None:
        """For a stored prototype choice: raise :class:`CodebookMismatchError` (naming both versions)
        unless the cloud's current codebook is the one it was made against. No-op for other families.

        One ``GET /v1/codebook``, for an app that wants to know before it sends anything (say, to choose
        again ahead of time). The routes need no such round trip: each request names the choice's
        version, and the cloud refuses a stale one atomically.
        """
        distribution = self.state.distribution
        if "choose" in distribution.capabilities:
            cast(PrototypeDistribution, distribution).check_codebook(await self.codebook())

    async def choose_prototype(
        self, examples: Sequence[Example], *, noise_std: float = DEFAULT_NOISE_STD
    ) -> PrototypeChoice:
        """Choose a prototype of the cloud's codebook privately and store it as the parameters.

        Every usable prototype is scored on every example (one ``POST /v1/codebook/losses`` per
        example); the lowest mean loss wins (ties: lowest index). When the stored choice was made against
        the same prototypes and only retirements that spared it happened since, the choice is the same
        and is kept without a request (``requests == 0`` and NaN losses in the result). The new
        :class:`PrototypeDistribution` replaces the stored parameters (policy checked, file written
        atomically); from then on uploads and chats carry samples of it.

        Parameters
        ----------
        examples : sequence of ``(task, text, label)``
            The phone's own examples.
        noise_std : float
            Std of the noise every upload adds to the prototype.
        """
        self._check_family(PrototypeDistribution.family)
        async with self._lock:
            book = await self.codebook()

            async def ask(task: str, text: str, label: str, book: Codebook) -> np.ndarray:
                async def exchange() -> np.ndarray:
                    try:
                        return await self.api.codebook_losses(task, text, label, book)
                    except VeilAPIError as exc:
                        if exc.code == "codebook_version_mismatch":  # published anew meanwhile
                            raise CodebookMismatchError(exc.message) from exc
                        raise
                    except (KeyError, TypeError, ValueError) as exc:
                        raise InvalidResponseError(f"codebook losses are malformed: {exc!r}") from exc

                return await self._with_retries(exchange)

            kept = self._still_best(book)
            if kept is not None:  # only usable flags changed and the choice is still usable: no request
                index, mean_losses, requests = kept, np.full(book.size, np.nan), 0
            else:
                losses = await prototype_losses(ask, book, examples, self.max_in_flight)
                index, mean_losses, requests = (
                    self.backend.choose(losses, book),
                    losses.mean(axis=0),
                    len(examples),
                )
            state = ClientState(PrototypeDistribution(book, index, noise_std), {}, self.model)
            self._enforce(state.distribution)
            self.store.save(state)  # raises before anything changes in memory
            self._state = state
            return PrototypeChoice(index, book.version, mean_losses, requests)

    def _still_best(self, book: Codebook) -> int | None:
        """The stored choice's index when ``book`` differs from the codebook it was made against only by
        retirements that spared it: the argmin over a subset that still holds the old minimum is that
        minimum (ties still go to it, the lowest index among the minima), so choosing again would give
        the same index. ``None`` when the phone must score the prototypes."""
        if not self.store.exists():
            return None
        try:
            state = self.state
        except (ParamStoreError, ModelMismatchError, PolicyViolationError):
            return None
        old = state.distribution
        if "choose" not in old.capabilities:
            return None
        chosen = cast(PrototypeDistribution, old)
        same = chosen.codebook.shape == book.shape and chosen.codebook.size == book.size
        if not same or not np.array_equal(chosen.codebook.prototypes, book.prototypes):
            return None
        if not book.active[chosen.index] or np.any(book.active & ~chosen.codebook.active):
            return None  # retired, or a prototype came back: score again
        return chosen.index

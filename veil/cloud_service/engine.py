"""The model engine behind the API: one personalised LM, requests batched when they arrive together.

Requests are queued per kind (chat generation, embedding gradients). A batching loop takes the first
waiting request, waits up to ``batch_window_s`` for more (at most ``max_batch``), and runs the batch on
the single model thread; requests that arrive meanwhile form the next batch. Generation streams: each
new token is decoded on the model thread and handed to the request's asyncio queue, so SSE clients see
tokens as they are produced. Stop strings are checked on the decoded text, never split across deltas.
A request may bring its own KV-cache compressor (one instance per request: compressors keep per-call
state); rows of one batch may use different methods, or none. When a batch with compression fails, its
rows run again one by one, so that one row's failing compressor costs only that row (see
:meth:`ServingEngine._run_chat`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from veil.models.compression import KVCompressor, KVKept, check_supported
from veil.models.generation import SamplingParams, TokenLogprobs, first_stop, generate_batch, token_logprobs
from veil.models.tasks import tokenize_task
from veil.models.training import embedding_gradients, embedding_losses

__all__ = ["KV_COMPRESSION_FAILED", "ChatEvent", "EngineConfig", "GradientResult", "ServingEngine"]

log = logging.getLogger(__name__)

T = TypeVar("T")

KV_COMPRESSION_FAILED = "kv_compression_failed"
""":attr:`ChatEvent.error` of a row with a compressor that failed even when run alone."""


@dataclass
class EngineConfig:
    """Batching of model work.

    Attributes
    ----------
    max_batch: most requests run together in one forward pass.
    batch_window_s: how long the first request of a batch waits for companions.
    """

    max_batch: int = 8
    batch_window_s: float = 0.005

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0.0 <= self.batch_window_s <= 1.0:
            raise ValueError(f"batch_window_s must be in [0, 1], got {self.batch_window_s}")


@dataclass
class ChatEvent:
    """One streamed piece of a completion: a text ``delta``, or the end (``finish_reason`` set).

    The end carries ``logprobs`` of the ``completion_tokens`` generated tokens when the request asked
    for them (``SamplingParams.top_logprobs`` set), else ``None``, and ``kv_kept``, the kept fractions
    of the prompt cache, when the request brought a compressor. A failed row ends with
    ``finish_reason="error"`` and ``error``: :data:`KV_COMPRESSION_FAILED` when its own compression
    failed, ``None`` for any other failure of the model.
    """

    delta: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprobs] | None = None
    kv_kept: KVKept | None = None
    error: str | None = None


@dataclass
class GradientResult:
    loss: float
    gradient: np.ndarray  # (n_tokens, hidden)


@dataclass
class _ChatJob:
    prompt_ids: list[int]
    embedding: np.ndarray | None
    params: SamplingParams
    stop: tuple[str, ...]
    events: asyncio.Queue[ChatEvent]
    loop: asyncio.AbstractEventLoop
    compression: KVCompressor | None = None
    kv_kept: KVKept | None = None
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    emitted: int = 0
    text: str = ""
    finished: bool = False


@dataclass
class _GradJob:
    task: str
    text: str
    label: str
    embedding: np.ndarray
    future: asyncio.Future[GradientResult]
    grad: bool = True
    """False: the loss alone (one forward, no backward); the result's gradient is empty."""


class ServingEngine:
    """Serves one :class:`~veil.models.personalization.PersonalizedLM` to many concurrent requests.

    Parameters
    ----------
    model: the personalised LM (eval mode).
    tokenizer: its tokenizer (chat template, left padding).
    name: the model id shown by ``/v1/models``.
    classes: class names for the classification task (``None``: next-word only).
    config: batching settings.
    on_batch: optional callback ``(kind, size)`` for metrics.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        classes: Sequence[str] | None = None,
        config: EngineConfig | None = None,
        on_batch: Any = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.classes = list(classes) if classes else None
        self.config = config or EngineConfig()
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="veil-model")
        self._chat_queue: asyncio.Queue[_ChatJob] | None = None
        self._grad_queue: asyncio.Queue[_GradJob] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)
        stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
        self.stop_token_ids = tuple(sorted(int(t) for t in stops if isinstance(t, int) and t >= 0))

    # ------------------------------------------------------------------ facts about the model
    @property
    def embedding_shape(self) -> tuple[int, int]:
        return tuple(self.model.embedding_shape)  # type: ignore[return-value]

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.base.config, "max_position_embeddings", 2048))

    def compression_refusal(self) -> str | None:
        """Why the served model's KV cache cannot be compressed, or ``None`` when it can."""
        try:
            check_supported(self.model.base)
        except ValueError as exc:
            return f"model {self.name!r} does not support kv_compression: {exc}"
        return None

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids for chat ``messages`` (the model's chat template, generation prompt added)."""
        if getattr(self.tokenizer, "chat_template", None):
            enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            ids = enc["input_ids"] if hasattr(enc, "keys") else enc
            return [int(t) for t in ids]
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return [int(t) for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._chat_queue = asyncio.Queue()
        self._grad_queue = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._batch_loop(self._chat_queue, self._run_chat), name="veil-chat-batcher"),
            asyncio.create_task(
                self._batch_loop(self._grad_queue, self._run_grads), name="veil-grad-batcher"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _batch_loop(self, queue: asyncio.Queue[Any], run: Any) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.config.batch_window_s
            while len(batch) < self.config.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    while len(batch) < self.config.max_batch and not queue.empty():
                        batch.append(queue.get_nowait())
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            if self._on_batch is not None:
                self._on_batch("chat" if run == self._run_chat else "gradients", len(batch))
            try:
                await loop.run_in_executor(self._executor, run, batch)
            except Exception as exc:  # the batch failed as a whole: fail every request in it
                log.exception("model batch failed")
                for job in batch:
                    self._fail(job, exc)

    @staticmethod
    def _fail(job: Any, exc: Exception, code: str | None = None) -> None:
        if isinstance(job, _GradJob):
            job.future.get_loop().call_soon_threadsafe(_reject, job.future, exc)
        elif not job.finished:
            job.finished = True
            event = ChatEvent(finish_reason="error", error=code)
            job.loop.call_soon_threadsafe(job.events.put_nowait, event)

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the model thread, between two batches: nothing else uses the model meanwhile.

        For work that drives the model itself through many generations (a DeepRAG loop); every batch
        queued meanwhile waits for it.
        """
        if not self._tasks:
            raise RuntimeError("engine not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # ------------------------------------------------------------------ chat
    async def chat(
        self,
        prompt_ids: list[int],
        embedding: np.ndarray | None,
        params: SamplingParams,
        stop: Sequence[str] = (),
        compression: KVCompressor | None = None,
    ) -> AsyncIterator[ChatEvent]:
        """Stream a completion; the last event has ``finish_reason`` set.

        ``compression`` prunes this request's prompt cache after prefill; it must be this request's own
        instance (it records the kept fractions of its last call).
        """
        if self._chat_queue is None:
            raise RuntimeError("engine not started")
        params = replace(params, stop_token_ids=self.stop_token_ids)
        job = _ChatJob(
            list(prompt_ids),
            embedding,
            params,
            tuple(stop),
            asyncio.Queue(),
            asyncio.get_running_loop(),
            compression,
        )
        await self._chat_queue.put(job)
        try:
            while True:
                event = await job.events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            job.cancelled = True  # the consumer went away: stop generating for it

    def _run_chat(self, jobs: list[_ChatJob]) -> None:
        """Generate for one batch; when it fails and a row brought a compressor, run the rows alone.

        A compressor can fail in ways the request checks cannot foresee (a prompt shape its scoring
        mishandles), and one failing row would otherwise fail the whole batch. So a failed batch with
        compression runs again one row at a time, each with its own compressor, in a batch of its own:
        the rows that work get exactly the answer a batch of their own gives. A compressed row that
        fails alone (in a batch of one too) ends with ``error`` :data:`KV_COMPRESSION_FAILED`, its
        compression being the one part of the forward that is its own; it is logged here with the
        traceback and the compressor's class (never the prompt), and the route answers a 500 that
        names the method and shows no trace. Not run again, and ended with ``error=None``: rows that
        had already produced tokens (a rerun would repeat what was streamed). Rows without a
        compressor that fail alone end with ``error=None`` too. A batch without compression fails as
        a whole, as before. Rerun rows are not counted as batches (``on_batch``).
        """
        try:
            self._generate(jobs)
            return
        except Exception as exc:
            if all(j.compression is None for j in jobs):
                raise  # nothing row-specific to isolate: the batch loop fails every row
            if len(jobs) == 1:
                self._fail_alone(jobs[0], exc)
                return
            log.warning(
                "a chat batch of %d rows with KV compression failed; running its rows one by one",
                len(jobs),
                exc_info=True,
            )
            failure = exc
        for job in jobs:
            if job.finished or job.cancelled:
                continue
            if job.tokens:
                log.error("a chat row that had started generating is failed with its batch")
                self._fail(job, failure)
                continue
            job.kv_kept = None
            try:
                self._generate([job])
            except Exception as exc:
                self._fail_alone(job, exc)

    def _fail_alone(self, job: _ChatJob, exc: Exception) -> None:
        """End a row that failed in a batch of its own; must be called from its ``except`` block."""
        if job.compression is None:
            log.exception("a chat row without KV compression failed alone")
            self._fail(job, exc)
            return
        # the prompt and the answer stay out of the log: only the method and the trace
        log.exception("KV compression %s failed for one chat row", type(job.compression).__name__)
        self._fail(job, exc, KV_COMPRESSION_FAILED)

    def _generate(self, jobs: list[_ChatJob]) -> None:
        counts = [0] * len(jobs)
        current: list[Any] = [None]  # this step's logits (B, V), kept for the rows that ask for logprobs

        def on_logits(logits: Any) -> None:
            current[0] = logits

        def on_step(step: list[int | None]) -> set[int]:
            stop_rows: set[int] = set()
            for r, (job, tok) in enumerate(zip(jobs, step, strict=True)):
                if job.cancelled:
                    stop_rows.add(r)
                    continue
                if tok is None or job.finished:
                    continue
                counts[r] += 1
                job.tokens.append(tok)
                if job.params.top_logprobs is not None:
                    job.logprobs.append(token_logprobs(current[0][r], tok, job.params.top_logprobs))
                if self._advance(job, counts[r]):
                    stop_rows.add(r)
            return stop_rows

        def on_kv_kept(kept: list[KVKept | None]) -> None:
            for job, row in zip(jobs, kept, strict=True):
                job.kv_kept = row

        compression = [j.compression for j in jobs]
        results = generate_batch(
            self.model,
            [j.prompt_ids for j in jobs],
            [j.embedding for j in jobs],
            [j.params for j in jobs],
            self.pad_id,
            on_step,
            on_logits,
            compression=compression if any(c is not None for c in compression) else None,
            on_kv_kept=on_kv_kept,
        )
        for job, (_tokens, reason), n in zip(jobs, results, counts, strict=True):
            if job.finished:
                continue
            self._flush(job, len(job.text))
            self._finish(job, reason, n)

    @staticmethod
    def _finish(job: _ChatJob, reason: str, n_tokens: int) -> None:
        job.finished = True
        logprobs = job.logprobs[:n_tokens] if job.params.top_logprobs is not None else None
        event = ChatEvent(
            finish_reason=reason, completion_tokens=n_tokens, logprobs=logprobs, kv_kept=job.kv_kept
        )
        job.loop.call_soon_threadsafe(job.events.put_nowait, event)

    def _advance(self, job: _ChatJob, n_tokens: int) -> bool:
        """Decode the row so far, emit what is safe, finish the job at a stop string (returns True)."""
        # decoding the whole row each step keeps multi-byte characters and token merges right
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        cut = first_stop(text, job.stop)
        if cut is not None:
            job.text = text[:cut]
            self._flush(job, len(job.text))
            self._finish(job, "stop", n_tokens)
            return True
        job.text = text
        # hold back what could be the start of a stop string, and an unfinished UTF-8 character
        safe = len(text.rstrip("\ufffd"))
        if job.stop:
            safe = min(safe, len(text) - max(len(s) for s in job.stop) + 1)
        self._flush(job, safe)
        return False

    def _flush(self, job: _ChatJob, upto: int) -> None:
        if upto > job.emitted:
            delta = job.text[job.emitted : upto]
            job.emitted = upto
            job.loop.call_soon_threadsafe(job.events.put_nowait, ChatEvent(delta=delta))

    # ------------------------------------------------------------------ embedding gradients
    async def gradient(self, task: str, text: str, label: str, embedding: np.ndarray) -> GradientResult:
        """Loss and dL/de for one anonymous example (batched with concurrent requests)."""
        return await self._queue_grad(task, text, label, embedding, grad=True)

    async def loss(self, task: str, text: str, label: str, embedding: np.ndarray) -> float:
        """The loss alone for one anonymous example (batched with concurrent loss and gradient requests)."""
        return (await self._queue_grad(task, text, label, embedding, grad=False)).loss

    async def _queue_grad(
        self, task: str, text: str, label: str, embedding: np.ndarray, *, grad: bool
    ) -> GradientResult:
        if self._grad_queue is None:
            raise RuntimeError("engine not started")
        future: asyncio.Future[GradientResult] = asyncio.get_running_loop().create_future()
        await self._grad_queue.put(_GradJob(task, text, label, embedding, future, grad=grad))
        return await future

    def _run_grads(self, jobs: list[_GradJob]) -> None:
        for task, grad in sorted({(j.task, j.grad) for j in jobs}):
            group = [j for j in jobs if j.task == task and j.grad == grad]
            data = tokenize_task(
                self.tokenizer,
                task,  # type: ignore[arg-type]
                [j.text for j in group],
                [j.label for j in group],
                self.classes or [],
            )
            emb = np.stack([j.embedding for j in group]).astype(np.float32)
            rows = np.arange(len(group))
            if grad:
                losses, grads = embedding_gradients(self.model, data, rows, emb)
            else:
                losses, grads = embedding_losses(self.model, data, rows, emb), [np.empty(0)] * len(group)
            for j, loss, g in zip(group, losses, grads, strict=True):
                result = GradientResult(float(loss), g)
                j.future.get_loop().call_soon_threadsafe(_resolve, j.future, result)


def _reject(future: asyncio.Future[GradientResult], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)


def _resolve(future: asyncio.Future[GradientResult], result: GradientResult) -> None:
    if not future.done():
        future.set_result(result)

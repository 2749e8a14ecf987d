"""A scripted reader of the generated world, shared by the DeepRAG tests (the model stand-in that
DeepRAG's algorithms can be tested with before a trained model exists)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from veil.models.rag.lm import Completion
from veil.models.rag.protocol import INTERMEDIATE, STOP_SEQUENCES, parse_trace
from veil.models.rag.world import World


class WorldReader:
    """A :class:`~veil.models.rag.lm.TextLM` that knows the world's parametric facts."""

    def __init__(self, world: World, knows_external: bool = False) -> None:
        self.world = world
        self.knows_external = knows_external
        self.by_text = {q.text: q for q in world.questions}
        self.calls = 0

    def chat_prompt(self, user: str, assistant_prefix: str = "") -> str:
        return f"<user>{user}</user><assistant>{assistant_prefix}"

    def complete(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[Completion]:
        self.calls += 1
        return [self._one(p, tuple(stop)) for p in prompts]

    def _one(self, prompt: str, stop: tuple[str, ...]) -> Completion:
        user, prefix = re.fullmatch(r"<user>(.*)</user><assistant>(.*)", prompt, re.S).groups()  # type: ignore[union-attr]
        question = self.by_text[re.search(r"Question: (.*)$", user).group(1)]  # type: ignore[union-attr]
        done = len(parse_trace(prefix, require_final=False).steps) if "So the final" not in prefix else 0
        if stop == STOP_SEQUENCES:  # the follow-up phase
            if done == len(question.hops):
                return Completion("", "So the final")
            hop = question.hops[done]
            return Completion(f"Follow up: {hop.subquery}\n", "Let" if hop.needs_retrieval else INTERMEDIATE)
        if "</answer short>" in stop:  # the final answer: the last intermediate answer
            trace = parse_trace(prefix.rsplit("So the final", 1)[0], require_final=False)
            last = trace.steps[-1].answer if trace.steps else ""
            return Completion(f" <answer long>{last}</answer long><answer short>{last}", "</answer short>")
        hop = question.hops[len(parse_trace(prefix + " x\n", require_final=False).steps) - 1]
        step_text = prefix.rsplit("Follow up:", 1)[1]
        if step_text.split("\n", 1)[0].strip() != hop.subquery:  # asked about another entity
            return Completion(" Nobody", "\n", (-3.0,))
        if not hop.fact.external or self.knows_external or hop.fact.sentence() in step_text:
            return Completion(f" {hop.answer}", "\n", (-0.01,))
        return Completion(" Nobody", "\n", (-3.0,))  # a guess

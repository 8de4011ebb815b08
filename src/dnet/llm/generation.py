"""One sequence's generation, step by step: logits in, a token and the text it lets out.

`Generation` is what every generation loop shares (`LLM.steps` for one sequence, the
`Batcher` for many at once): it samples the next token from the model's logits, streams the
text through incomplete characters and stop strings, and decides when the sequence ends (an
end-of-sequence token, a stop string, `max_tokens`, or a full context). It never runs the
model: the loop feeds it the logits of each step and decodes the token it returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dnet.errors import GenerationError
from dnet.llm.sampling import Sampler, SamplingParams, StopBuffer, TextStream


@dataclass(frozen=True)
class Step:
    """One generated token: its id, the text it lets out (may be empty), its log-probability."""
    token: int
    text: str
    logprob: float
    top: list = field(default_factory=list)
    finish_reason: str | None = None      # on the last step: "stop" (EOS or a stop string) or "length"


class Generation:
    """The state of one sequence being generated after `prompt` (token ids) with `params`.

    `push(logits, room)` takes the logits predicting the next token and whether the context has
    room to decode one more; it returns the step, whose `finish_reason` is set on the last one.
    """

    def __init__(self, prompt: Sequence[int], params: SamplingParams, tokenizer, context: int):
        if len(prompt) >= context:
            raise GenerationError(f"the prompt's {len(prompt)} tokens leave no room in the context of {context}",
                                  hint="shorten the prompt or load with a larger context=")
        self.prompt, self.params = list(prompt), params
        self.eos = set(tokenizer.eos_token_ids)
        self.sampler = Sampler(params, self.eos)
        self.history = list(prompt)                # the prompt and every token generated, for the penalties
        self.generated = 0
        self.finish_reason: str | None = "length" if params.max_tokens == 0 else None
        self._text = TextStream(tokenizer.decode, self.prompt[-4:])
        self._stops = StopBuffer(params.stop)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def push(self, logits: np.ndarray, room: bool = True) -> Step:
        """Sample the next token from `logits`; `room`: the context can take the token it decodes next."""
        if self.finished:
            raise GenerationError("this generation has finished")
        r = self.sampler.sample(logits, self.history)
        if r.token in self.eos and not self.params.ignore_eos:
            return self._finish(Step(r.token, self._stops.push(self._text.flush()) + self._stops.flush(),
                                     r.logprob, r.top, "stop"))
        self.history.append(r.token)
        self.generated += 1
        shown = self._stops.push(self._text.push(r.token))
        if self._stops.stopped:
            return self._finish(Step(r.token, shown, r.logprob, r.top, "stop"))
        if self.generated == self.params.max_tokens or not room:
            shown += self._stops.push(self._text.flush()) + self._stops.flush()
            return self._finish(Step(r.token, shown, r.logprob, r.top, "stop" if self._stops.stopped else "length"))
        return Step(r.token, shown, r.logprob, r.top)

    def _finish(self, step: Step) -> Step:
        self.finish_reason = step.finish_reason
        return step

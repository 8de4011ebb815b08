"""Choosing the next token from a model's logits, and turning the chosen tokens into text.

    SamplingParams   the options of one request, checked once (`from_options`)
    Sampler          one per sequence: penalties -> top-k -> temperature -> top-p -> min-p -> draw
    StopBuffer       streams text, holding back what could be the start of a stop string
    TextStream       streams tokens as text, holding back incomplete UTF-8 characters

The sampler works on the few candidates that survive top-k, never sorting the whole vocabulary:
a step costs a handful of passes over the logits (the penalties' copy, one `argpartition`, one
log-sum-exp for the log-probabilities) whatever the vocabulary size.

Order of the filters: the penalties, then top-k, temperature, top-p and min-p, as Hugging Face's
`generate` applies them (temperature and top-k commute, top-k keeping the k largest logits at any
temperature). llama.cpp's default chain applies the temperature last, after top-p and min-p; the
two differ only when top-p or min-p cut at a temperature other than 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import numpy as np

from dnet.errors import GenerationError, did_you_mean

MAX_TOP_LOGPROBS = 20


# --------------------------------------------------------------------------- options


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# option -> (what its value must be, test on a value of the right kind). Types are checked first.
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "max_tokens": (">= 0", lambda v: v >= 0),
    "temperature": (">= 0", lambda v: v >= 0),
    "top_k": (">= 0 (0 = off)", lambda v: v >= 0),
    "top_p": ("in (0, 1]", lambda v: 0 < v <= 1),
    "min_p": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "repetition_penalty": ("> 0", lambda v: v > 0),
    "repeat_last_n": (">= -1 (-1 = the whole history)", lambda v: v >= -1),
    "frequency_penalty": ("finite", math.isfinite),
    "presence_penalty": ("finite", math.isfinite),
    "top_logprobs": (f"in [0, {MAX_TOP_LOGPROBS}]", lambda v: 0 <= v <= MAX_TOP_LOGPROBS),
}

_INTS = ("max_tokens", "top_k", "repeat_last_n", "top_logprobs")
_FLOATS = ("temperature", "top_p", "min_p",
           "repetition_penalty", "frequency_penalty", "presence_penalty")
_BOOLS = ("logprobs", "ignore_eos")


def _bad(name: str, value, must: str) -> GenerationError:
    return GenerationError(f"sampling option '{name}' must be {must}, got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """The sampling options of one request (llama.cpp's defaults). temperature == 0 is greedy."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    def __post_init__(self):
        for name in _INTS:
            if not _is_int(getattr(self, name)):
                raise _bad(name, getattr(self, name), "an integer")
        for name in _FLOATS:
            value = getattr(self, name)
            if not _is_number(value):
                raise _bad(name, value, "a number")
            object.__setattr__(self, name, float(value))
        for name in _BOOLS:
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise _bad(name, getattr(self, name), "true or false")
        for name, (must, test) in _RANGES.items():
            value = getattr(self, name)
            if not test(value):  # NaN fails every test
                raise _bad(name, value, must)
        if self.seed is not None and not (_is_int(self.seed) and self.seed >= 0):
            raise _bad("seed", self.seed, "an integer >= 0, or None for a random one")
        object.__setattr__(self, "stop", _stop_strings(self.stop))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_options(cls, **options) -> SamplingParams:
        """Params from user options (a request's JSON, CLI flags); unknown names are errors."""
        known = cls.option_names()
        for name in options:
            if name not in known:
                hint = did_you_mean(name, known)
                hint = f"{hint} " if hint else ""
                raise GenerationError(
                    f"unknown sampling option '{name}' ({hint}known: {', '.join(known)})")
        return cls(**options)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _stop_strings(stop) -> tuple[str, ...]:
    """`stop` as a tuple of non-empty strings; one string is one stop string."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)):
        raise _bad("stop", stop, "a string or a list of strings")
    for entry in stop:
        if not isinstance(entry, str) or not entry:
            raise _bad("stop", entry, "a non-empty string (in the list of stop strings)")
    return tuple(stop)


# --------------------------------------------------------------------------- sampler


@dataclass(frozen=True)
class SampleResult:
    """The chosen token, its log-probability and the `top_logprobs` most likely tokens.

    Log-probabilities are those of the model's raw logits (before penalties and filters), as in
    OpenAI's API; `top` is best first, ties broken by the lower id.
    """

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Candidates:
    """Token ids still in the running and their (penalised, temperature-scaled) logits."""

    ids: np.ndarray     # int64
    logits: np.ndarray  # float64


class Sampler:
    """Draws tokens for one sequence; the same seed gives the same tokens.

    `eos_ids` are the end-of-sequence tokens, banned when `params.ignore_eos` is set.
    """

    def __init__(self, params: SamplingParams | None = None, eos_ids: Sequence[int] = ()):
        self.params = params or SamplingParams()
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.rng = np.random.default_rng(self.params.seed)

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> SampleResult:
        """A token from `logits` (vocab,); `history` is the sequence so far, prompt included (as
        llama.cpp, whose penalties see the prompt's last tokens too)."""
        logits = _as_logits(logits)
        ids, weights = self._survivors(logits, history)
        token = int(ids[self._draw(weights)]) if len(ids) > 1 else int(ids[0])
        log_norm = _log_sum_exp(logits)
        top = [(int(i), float(logits[i] - log_norm)) for i in _best(logits, self.params.top_logprobs)]
        return SampleResult(token, float(logits[token] - log_norm), top)

    def distribution(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        """The probabilities `sample` draws from, over the whole vocabulary (zero where filtered)."""
        logits = _as_logits(logits)
        ids, weights = self._survivors(logits, history)
        probs = np.zeros(len(logits), dtype=np.float64)
        probs[ids] = weights / weights.sum()
        return probs

    def _survivors(self, logits: np.ndarray, history: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The ids left after every filter and their unnormalised probabilities."""
        p = self.params
        penalised = apply_penalties(logits, history, p)
        if p.ignore_eos and self.eos_ids:
            penalised = logits.copy() if penalised is logits else penalised  # never the caller's
            penalised[list(self.eos_ids)] = -np.inf
        if p.greedy:  # argmax: the lowest id among equals
            best = int(np.argmax(penalised))
            _check_finite(penalised[best])
            return np.array([best]), np.ones(1)
        candidates = top_k(penalised, p.top_k)  # NaN counts as the largest: it is caught below
        candidates.logits /= p.temperature
        best = candidates.logits.max()
        _check_finite(best)
        weights = np.exp(candidates.logits - best)  # 1 for the most likely
        # top-p and min-p each keep a best-first run of tokens, so applying both keeps the shorter
        # run in either order; min-p first (one cheap comparison) leaves top-p less to sort, and
        # top-p measures its mass against all the candidates (`total`), not min-p's survivors.
        total = weights.sum()
        ids, weights = min_p(candidates.ids, weights, p.min_p)
        return top_p(ids, weights, p.top_p, total)

    def _draw(self, weights: np.ndarray) -> int:
        cumulative = np.cumsum(weights)
        point = self.rng.random() * cumulative[-1]
        return min(int(np.searchsorted(cumulative, point, side="right")), len(weights) - 1)


def _check_finite(best_logit: float) -> None:
    if not np.isfinite(best_logit):
        raise GenerationError(
            f"cannot sample: the best logit is {best_logit} (NaNs, or every token banned)")


def _as_logits(logits) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 1:
        raise GenerationError(f"logits must be one row (vocab,), got shape {logits.shape}")
    return logits.astype(np.float32, copy=False)


def apply_penalties(logits: np.ndarray, history: Sequence[int], p: SamplingParams) -> np.ndarray:
    """Repetition (CTRL: divide positive logits, multiply negative ones), frequency and presence
    penalties (OpenAI: minus count * frequency, minus presence once), over the last
    `repeat_last_n` tokens of `history`. Returns `logits` itself when nothing applies."""
    active = p.repetition_penalty != 1 or p.frequency_penalty != 0 or p.presence_penalty != 0
    if not active or p.repeat_last_n == 0 or len(history) == 0:
        return logits
    window = history if p.repeat_last_n < 0 else history[-p.repeat_last_n:]
    ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
    values = logits[ids]
    values = np.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    values = values - counts * p.frequency_penalty - p.presence_penalty
    penalised = logits.copy()
    penalised[ids] = values
    return penalised


def top_k(logits: np.ndarray, k: int) -> Candidates:
    """The k largest logits (all of them when k is 0 or at least the vocabulary), unsorted."""
    if 0 < k < len(logits):
        ids = np.argpartition(logits, len(logits) - k)[len(logits) - k:]
        return Candidates(ids.astype(np.int64), logits[ids].astype(np.float64))
    return Candidates(np.arange(len(logits), dtype=np.int64), logits.astype(np.float64))


def min_p(ids: np.ndarray, weights: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the tokens at least `threshold` times as likely as the most likely one.

    `weights` are probabilities scaled so that the most likely is 1."""
    if threshold <= 0:
        return ids, weights
    keep = weights >= threshold
    return ids[keep], weights[keep]


def top_p(ids: np.ndarray, weights: np.ndarray, mass: float,
          total: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keep the most likely tokens until their probability reaches `mass` (the one that crosses
    it included), best first; probabilities are `weights / total` (total: `weights.sum()` unless
    given). Sorts only a prefix: the top 64, 256, ... until it holds the mass."""
    if mass >= 1 or len(ids) <= 1:
        return ids, weights
    target = mass * (weights.sum() if total is None else total)
    size = 64
    while True:
        prefix = _largest(weights, min(size, len(weights)))
        before = np.cumsum(weights[prefix]) - weights[prefix]  # mass of the tokens ahead of each
        if size >= len(weights) or before[-1] + weights[prefix[-1]] >= target:
            kept = prefix[before < target]
            return ids[kept], weights[kept]
        size *= 4


def _largest(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values, largest first (equal values in no particular order)."""
    if n >= len(values):
        return np.argsort(-values)
    part = np.argpartition(values, len(values) - n)[len(values) - n:]
    return part[np.argsort(-values[part])]


def _best(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest values, largest first, ties by the lower index (for small n)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n < len(values):
        part = np.argpartition(values, len(values) - n)[len(values) - n:]
    else:
        part = np.arange(len(values))
    return part[np.lexsort((part, -values[part]))]


def _log_sum_exp(logits: np.ndarray) -> float:
    high = float(np.max(logits))
    if not np.isfinite(high):
        return high
    return high + math.log(float(np.exp(logits - high).sum(dtype=np.float64)))


# --------------------------------------------------------------------------- text


class StopBuffer:
    """Streams text through stop strings.

    `push` returns the text that can be shown now: everything except a tail that could still
    grow into a stop string. Once a stop string is complete, `stopped` is set and the text before
    it is the last to come out. When two stop strings overlap, the one that ends first wins
    (the one a stream completes first), and of those ending together the longer one.
    """

    def __init__(self, stop: Sequence[str] | str):
        self.stop = tuple(s for s in ((stop,) if isinstance(stop, str) else stop) if s)
        self.stopped = False
        self._held = ""

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self._held += text
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = self._partial_stop_length()
        out = self._held[:len(self._held) - keep]
        self._held = self._held[len(self._held) - keep:]
        return out

    def flush(self) -> str:
        out, self._held = ("" if self.stopped else self._held), ""
        return out

    def _first_stop(self) -> int | None:
        """Start of the stop string that ends first in the held text (longest on a tie), or None."""
        best = None  # (end, -length, start)
        for s in self.stop:
            start = self._held.find(s)
            if start >= 0:
                key = (start + len(s), -len(s), start)
                best = key if best is None or key < best else best
        return None if best is None else best[2]

    def _partial_stop_length(self) -> int:
        """Length of the longest tail of the held text that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._held)), longest, -1):
                if self._held.endswith(s[:n]):
                    longest = n
                    break
        return longest


class TextStream:
    """Incremental detokenization: `push` one token id, get the text it adds.

    Decoding a token alone is wrong for many tokenizers (byte-level pieces of one UTF-8
    character, a leading space a SentencePiece decoder strips from the first token), so each step
    decodes a short window: the tokens from `prefix` on, and compares it with the decoding of the
    same window without the tokens not yet shown (from `read` on). Text ending in U+FFFD (an
    incomplete UTF-8 character) is held back until the next token completes it, or `flush`.

    `context` (a prompt's last tokens) gives the first tokens the neighbours they are decoded with.
    """

    def __init__(self, decode: Callable[[list[int]], str], context: Sequence[int] = ()):
        self.decode = decode
        self._ids = [int(i) for i in context]
        self._prefix = 0                # start of the window decoded for each step
        self._read = len(self._ids)     # tokens before this have been shown

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        shown = self.decode(self._ids[self._prefix:self._read])
        text = self.decode(self._ids[self._prefix:])
        if len(text) <= len(shown) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(shown):]

    def flush(self) -> str:
        """What is still held back (an incomplete character comes out as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        shown = self.decode(self._ids[self._prefix:self._read])
        text = self.decode(self._ids[self._prefix:])
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(shown):]

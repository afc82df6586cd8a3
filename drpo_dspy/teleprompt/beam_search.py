"""DRPO's beam search over alignment system prompts.

Training queries are consumed in order, one per level, and every candidate at a level is judged on the
same query. Each beam node gets ``n_actions`` rewrites from the optimizer LM; all children are pooled and
the ``beam_size`` best by mean reward along their path survive. A node whose last answer scored 5 on every
aspect, or whose mean score is above ``skip_threshold``, is not rewritten: its prompt carries to the next
level and the depth limit grows by one (at most once per level, ``max_depth_increase`` in total).
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import dspy

from drpo_dspy.adapters.field_markers import neutralize_field_markers
from drpo_dspy.adapters.typed_calls import call_typed, call_typed_samples, sampling_config
from drpo_dspy.clients.budget import Budget, BudgetExhausted, guarded
from drpo_dspy.clients.metering import Meter
from drpo_dspy.rewards.reward_judge import DynamicRewarder, Judgment, _failure_kind
from drpo_dspy.signatures import ProposeInstructions

logger = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """Hyper-parameters of the search (published defaults)."""

    beam_size: int = 2
    n_actions: int = 3
    depth: int = 20
    max_depth_increase: int = 10
    skip_threshold: float = 4.5
    temperature: float = 0.2
    history_window: int = 5
    num_threads: int = 8
    seed: int = 0
    paper_faithful_failures: bool = False  # True: an unreadable judgment scores 0 and triggers a skip
    proposal_sampling: str = "batched"  # "batched": one request for n_actions samples; "independent": one each
    minibatch_size: int = 1  # queries per level each candidate is judged on (1 = the paper)

    def __post_init__(self) -> None:
        if isinstance(self.minibatch_size, bool) or not isinstance(self.minibatch_size, int) or self.minibatch_size < 1:
            raise ValueError(f"minibatch_size must be an integer >= 1, got {self.minibatch_size!r}")
        if self.proposal_sampling not in ("batched", "independent"):
            raise ValueError(f"proposal_sampling must be 'batched' or 'independent', got {self.proposal_sampling!r}")

    @property
    def batched(self) -> bool:
        # DSPy raises the temperature of multi-sample calls at or below 0.15, so those are made one by one.
        return self.proposal_sampling == "batched" and self.n_actions > 1 and self.temperature > 0.15


@dataclass
class Node:
    """One candidate prompt, evaluated on its level's query."""

    id: int
    level: int
    prompt: str
    query: str
    response: str
    judgment: Judgment
    rewards: list[float | None]
    parent_id: int | None = None
    carried: bool = False
    versions: list[str] = field(default_factory=list)  # distinct prompts along the path, oldest first
    batch: list[dict[str, Any]] = field(default_factory=list)  # the other minibatch queries' answers and judgments

    @property
    def reward(self) -> float | None:
        return self.rewards[-1] if self.rewards else None

    @property
    def path_mean(self) -> float | None:
        known = [r for r in self.rewards if r is not None]
        return sum(known) / len(known) if known else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "level": self.level, "prompt": self.prompt, "query": self.query,
                "response": self.response, "judgment": self.judgment.to_dict(), "rewards": self.rewards,
                "path_mean": self.path_mean, "parent_id": self.parent_id, "carried": self.carried,
                "versions": self.versions, "batch": self.batch}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        missing = [k for k in ("id", "level", "prompt", "query", "response", "judgment", "rewards") if k not in d]
        if missing:
            raise ValueError(f"a saved node ({d.get('id', '?')!r:.20}) lacks the field(s) {', '.join(missing)}")
        if not all(r is None or (isinstance(r, int | float) and not isinstance(r, bool)) for r in d["rewards"]):
            raise ValueError(f"node {d.get('id')!r}: rewards must be numbers or null")
        return cls(d["id"], d["level"], d["prompt"], d["query"], d["response"], Judgment.from_dict(d["judgment"]),
                   list(d["rewards"]), d.get("parent_id"), bool(d.get("carried")), list(d.get("versions", [])),
                   list(d.get("batch", [])))


@dataclass
class SearchState:
    """Everything needed to continue a search after a level (checkpoint content)."""

    level: int = 0
    max_depth: int = 0
    depth_increases: int = 0
    next_id: int = 0
    beam: list[Node] = field(default_factory=list)
    ancestry: list[Node] = field(default_factory=list)  # every node on the path of a beam node
    stopped: str | None = None

    @property
    def best(self) -> Node | None:
        return self.beam[0] if self.beam else None

    def path_to(self, node: Node) -> list[Node]:
        """The nodes from the root to ``node`` (which must be in the beam's ancestry)."""
        by_id = {n.id: n for n in self.ancestry}
        path = [node]
        while path[-1].parent_id is not None:
            path.append(by_id[path[-1].parent_id])
        return path[::-1]

    @property
    def best_path(self) -> list[Node]:
        return self.path_to(self.beam[0]) if self.beam else []

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "max_depth": self.max_depth, "depth_increases": self.depth_increases,
                "next_id": self.next_id, "beam": [n.to_dict() for n in self.beam],
                "ancestry": [n.to_dict() for n in self.ancestry], "stopped": self.stopped}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchState:
        missing = [k for k in ("level", "max_depth", "depth_increases", "next_id", "beam", "ancestry") if k not in d]
        if missing:
            raise ValueError(f"the saved search state lacks the field(s) {', '.join(missing)}")
        for name in ("level", "max_depth", "depth_increases", "next_id"):
            if isinstance(d[name], bool) or not isinstance(d[name], int) or d[name] < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {d[name]!r:.40}")
        state = cls(d["level"], d["max_depth"], d["depth_increases"], d["next_id"],
                    [Node.from_dict(n) for n in d["beam"]], [Node.from_dict(n) for n in d["ancestry"]],
                    d.get("stopped"))
        known = {n.id for n in state.ancestry}
        if state.level and (not state.beam or any(n.id not in known for n in state.beam)):
            raise ValueError("the beam is empty or not part of the saved ancestry")
        for node in state.ancestry:
            if node.parent_id is not None and node.parent_id not in known:
                raise ValueError(f"node {node.id} names a parent ({node.parent_id}) that is not saved")
        return state


_TEMPLATE_ECHO = re.compile(r"\{[a-z_]+\}|\[\[ ## |<START>|<END>|JSON object|output fields", re.I)
MIN_PROMPT_CHARS = 3


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


_FIELD_DESCRIPTIONS = {
    _squash((field.json_schema_extra or {}).get("desc", ""))
    for field in [*ProposeInstructions.input_fields.values(), *ProposeInstructions.output_fields.values()]
}


def prompt_problem(text: str, query: str = "") -> str | None:
    """Why a proposed system prompt is unusable (empty, too short, a template echo, the query itself), or None."""
    if not text:
        return "empty_prompt"
    if len(text) < MIN_PROMPT_CHARS:
        return "too_short_prompt"
    if _TEMPLATE_ECHO.search(text) or _squash(text) in _FIELD_DESCRIPTIONS:
        return "template_echo_prompt"  # the adapter's template or a field description copied back
    if len(query.strip()) >= 12 and query.strip().lower() in text.lower():
        return "query_specific_prompt"  # a system prompt must be general, not about this query
    return None


def rank_key(node: Node) -> float:
    """Sort key: path mean, with nodes that have no reward at all ranked last."""
    mean = node.path_mean
    return float("-inf") if mean is None else mean


class BeamSearch:
    """Runs the search; LM calls within a level run concurrently, results are assembled in a fixed order."""

    def __init__(
        self,
        *,
        settings: SearchSettings,
        answer: Callable[[str, str], str],
        rewarder: DynamicRewarder,
        optimizer_lm: dspy.LM,
        meter: Meter,
        on_node: Callable[[Node], None] = lambda node: None,
        on_level: Callable[[SearchState], None] = lambda state: None,
        should_stop: Callable[[], str | None] = lambda: None,
        budget: Budget | None = None,
        base_lm: Any = None,
    ):
        self.settings = settings
        self.answer = answer  # (instructions, query) -> response text
        self.rewarder = rewarder
        self.optimizer_lm = optimizer_lm
        self.meter = meter
        self.on_node, self.on_level, self.should_stop = on_node, on_level, should_stop
        self.budget, self.base_lm = budget, base_lm
        self._propose = dspy.Predict(ProposeInstructions)

    # -- one evaluation: base answer, then judgment ---------------------------------------------------
    def _evaluate(self, prompt: str, query: str) -> tuple[str, Judgment]:
        selection = self.rewarder.select(query)
        try:
            spend = self.budget.spend(self.base_lm, prompt_chars=len(prompt) + len(query) + 4000) \
                if self.budget is not None else nullcontext()
            with spend, self.meter.usage("base"):
                response = self.answer(prompt, query)
        except BudgetExhausted:
            raise
        except Exception as exc:  # the base model failed: no answer, hence no reward for this candidate
            self.meter.record_failure("base", f"lm_error:{type(exc).__name__}")
            return "", Judgment(selection.aspects, failure=f"base_{type(exc).__name__}")
        if not response.strip():  # still judged (an empty answer is a bad answer), but counted
            self.meter.record_failure("base", "empty_answer")
        return response, self.rewarder.judge(query, response, selection)

    def _reward_of(self, judgment: Judgment) -> float | None:
        if judgment.reward is None and self.settings.paper_faithful_failures:
            return 0.0
        return judgment.reward

    def _wants_skip(self, node: Node) -> bool:
        if node.judgment.reward is None:
            return self.settings.paper_faithful_failures
        all_max = node.judgment.all_max and all(Judgment.from_dict(b["judgment"]).all_max for b in node.batch)
        return all_max or (node.reward is not None and node.reward > self.settings.skip_threshold)

    def _combine(self, batch: Sequence[str], results: Sequence[tuple[str, Judgment]]):
        """(query, response, judgment, reward, others) of one candidate over its minibatch.

        The reward is the mean over the readable judgments; the optimizer sees the worst-scored query.
        """
        rewards = [self._reward_of(judgment) for _, judgment in results]
        known = [r for r in rewards if r is not None]
        mean = sum(known) / len(known) if known else None
        primary = min(range(len(batch)), key=lambda i: (rewards[i] is None, rewards[i] or 0.0))
        others = [{"query": batch[i], "response": results[i][0], "judgment": results[i][1].to_dict()}
                  for i in range(len(batch)) if i != primary]
        return batch[primary], results[primary][0], results[primary][1], mean, others

    # -- proposals -------------------------------------------------------------------------------------
    def _history(self, node: Node) -> str:
        versions = node.versions[-self.settings.history_window:]
        lines = []
        for i, text in enumerate(versions, start=1):
            label = "Current Version" if i == len(versions) else f"Version {i}"
            lines.append(f"## {label}\n{text}")
        return "\n\n".join(lines)

    def _propose_inputs(self, node: Node) -> dict[str, str]:
        inputs = {"current_system_prompt": node.prompt, "query": node.query,
                  "response": node.response or "(empty answer)", "evaluation": node.judgment.render(),
                  "prompt_history": self._history(node)}
        return {name: neutralize_field_markers(text) for name, text in inputs.items()}

    def _propose_batch(self, node: Node) -> list[str | None]:
        """All of a node's rewrites from one multi-sample request; an unreadable sample drops only itself."""
        n = self.settings.n_actions
        config = sampling_config(self.optimizer_lm, temperature=self.settings.temperature, sample=0,
                                 seed=self.settings.seed)
        chars = len(node.prompt) * 6 + len(node.query) + len(node.response) + 2000
        try:
            spend = self.budget.spend(self.optimizer_lm, prompt_chars=chars) if self.budget else nullcontext()
            with spend, self.meter.usage("optimizer"):
                samples = call_typed_samples(self._propose, self.optimizer_lm, config, n, **self._propose_inputs(node))
        except BudgetExhausted:
            raise
        except Exception as exc:
            if type(exc).__name__ != "AdapterParseError":
                self.meter.record_failure("optimizer", f"lm_error:{type(exc).__name__}")
                return [None] * n
            samples = []  # nothing readable came back at all: ask for each rewrite on its own
        texts: list[str | None] = []
        for sample in samples[:n]:
            if sample is None:
                self.meter.record_failure("optimizer", "parse_failure")
                texts.append(None)
            else:
                texts.append(self._usable(sample.new_system_prompt, node.query))
        # A provider that ignores n returns fewer samples: top up with single requests.
        texts.extend(self._propose_one(node, action) for action in range(len(texts), n))
        return texts

    def _propose_one(self, node: Node, action: int) -> str | None:
        config = sampling_config(self.optimizer_lm, temperature=self.settings.temperature, sample=action,
                                 seed=self.settings.seed)
        chars = len(node.prompt) * 6 + len(node.query) + len(node.response) + 2000
        try:
            with guarded(self.budget, self.optimizer_lm, chars), self.meter.usage("optimizer"):
                pred = call_typed(self._propose, self.optimizer_lm, config, **self._propose_inputs(node))
        except BudgetExhausted:
            raise
        except Exception as exc:
            self.meter.record_failure("optimizer", _failure_kind(exc))
            return None
        return self._usable(pred.new_system_prompt, node.query)

    def _usable(self, text: str | None, query: str) -> str | None:
        """The proposed prompt, or None (counted) when it cannot serve as a system prompt."""
        text = (text or "").strip().strip('"').strip()
        problem = prompt_problem(text, query)
        if problem:
            self.meter.record_failure("optimizer", problem)
            return None
        return text

    # -- the search ------------------------------------------------------------------------------------
    def _map(self, pool: ThreadPoolExecutor, fn: Callable, items: Sequence) -> list:
        futures = [pool.submit(contextvars.copy_context().run, fn, *item) for item in items]
        return [f.result() for f in futures]

    def level_batches(self, queries: Sequence[str]) -> list[list[str]]:
        """The queries of each level: consecutive minibatches (one query each in the paper's setting)."""
        m = self.settings.minibatch_size
        return [list(queries[i:i + m]) for i in range(0, len(queries) - m + 1, m)]

    def start(self, queries: Sequence[str], initial_prompt: str) -> SearchState:
        """Level 1: the initial prompt answers the first query (minibatch)."""
        batch = self.level_batches(queries)[0]
        results = [self._evaluate(initial_prompt, q) for q in batch]
        query, response, judgment, reward, others = self._combine(batch, results)
        root = Node(0, 1, initial_prompt, query, response, judgment, [reward], versions=[initial_prompt],
                    batch=others)
        self.on_node(root)
        state = SearchState(level=1, max_depth=self.settings.depth, next_id=1, beam=[root], ancestry=[root])
        self.on_level(state)
        return state

    def run(self, queries: Sequence[str], initial_prompt: str, state: SearchState | None = None) -> SearchState:
        """Run (or continue) the search until the depth limit, the end of the queries, or a stop request."""
        if state is None:
            stop = self.should_stop()
            if stop:
                return SearchState(stopped=stop)
            try:
                state = self.start(queries, initial_prompt)
            except BudgetExhausted as exc:
                return SearchState(stopped=str(exc))
        batches = self.level_batches(queries)
        pool = ThreadPoolExecutor(max_workers=max(1, self.settings.num_threads))
        try:
            while state.level < state.max_depth and state.level < len(batches):
                stop = self.should_stop()
                if stop:
                    state.stopped = stop
                    break
                try:
                    self._step(state, batches[state.level], pool)
                except BudgetExhausted as exc:  # the unfinished level is dropped; the last finished one stands
                    state.stopped = str(exc)
                    break
                self.on_level(state)
        except KeyboardInterrupt:
            state.stopped = "interrupted (Ctrl-C)"
            pool.shutdown(wait=False, cancel_futures=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return state

    def _step(self, state: SearchState, batch: list[str], pool: ThreadPoolExecutor) -> None:
        level = state.level + 1
        selections = [pool.submit(contextvars.copy_context().run, self.rewarder.select, q) for q in batch]
        skipping = [self._wants_skip(node) for node in state.beam]
        expanding = [node for node, skip in zip(state.beam, skipping) if not skip]
        jobs = [(node, a) for node in expanding for a in range(self.settings.n_actions)]
        if self.settings.batched:
            proposals = [p for batch in self._map(pool, self._propose_batch, [(n,) for n in expanding]) for p in batch]
        else:
            proposals = self._map(pool, self._propose_one, jobs)
        for selection in selections:
            selection.result()
        candidates: list[tuple[Node, str, bool]] = []  # (parent, prompt, carried)
        for node, skip in zip(state.beam, skipping):
            if skip:
                candidates.append((node, node.prompt, True))
                continue
            mine = [p for (parent, _), p in zip(jobs, proposals) if parent is node and p is not None]
            if not mine:  # every rewrite failed: keep the prompt rather than lose the beam
                logger.warning("level %d: no usable rewrite for node %d; its prompt carries over", level, node.id)
                candidates.append((node, node.prompt, True))
            candidates.extend((node, p, False) for p in mine)
        flat = self._map(pool, self._evaluate, [(prompt, q) for _, prompt, _ in candidates for q in batch])
        children = []
        for i, (parent, prompt, carried) in enumerate(candidates):
            query, response, judgment, reward, others = self._combine(batch, flat[i * len(batch):(i + 1) * len(batch)])
            versions = parent.versions if carried or prompt == parent.prompt else [*parent.versions, prompt]
            child = Node(state.next_id, level, prompt, query, response, judgment, [*parent.rewards, reward],
                         parent.id, carried, list(versions), others)
            state.next_id += 1
            self.on_node(child)
            children.append(child)
        if any(skipping) and state.depth_increases < self.settings.max_depth_increase:
            state.max_depth += 1
            state.depth_increases += 1
        state.beam = sorted(children, key=rank_key, reverse=True)[: self.settings.beam_size]
        state.level = level
        known = {n.id: n for n in [*state.ancestry, *children]}
        keep: dict[int, Node] = {}
        for node in state.beam:
            while node.id not in keep:
                keep[node.id] = node
                if node.parent_id is None:
                    break
                node = known[node.parent_id]
        state.ancestry = sorted(keep.values(), key=lambda n: n.id)

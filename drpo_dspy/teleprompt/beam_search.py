"""DRPO's beam search over alignment system prompts.

Training queries are consumed in order, one per level, and every candidate at a level is judged on the
same query. Each beam node gets ``n_actions`` rewrites from the optimizer LM; all children are pooled and
the ``beam_size`` best by mean reward along their path (the root's reward left out, as in the original code)
survive. A node whose last answer scored 5 on every aspect, or whose mean score is above ``skip_threshold``, is
not rewritten: its prompt carries to the next level and the depth limit grows by one (at most once per level,
``max_depth_increase`` in total). Every step is announced as a typed event (:mod:`drpo_dspy.primitives.events`).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy

from drpo_dspy.adapters.answer_checks import EMPTY_FAILURE as EMPTY_ANSWER
from drpo_dspy.adapters.field_markers import neutralize_field_markers
from drpo_dspy.adapters.typed_calls import call_typed, call_typed_samples, requests_per_call, sampling_config
from drpo_dspy.clients.budget import Budget, BudgetExhausted, guarded
from drpo_dspy.clients.metering import Meter
from drpo_dspy.primitives.events import (
    BeamSelected,
    BudgetUpdated,
    CandidateDropped,
    CandidateJudged,
    LevelFinished,
    LevelStarted,
    SearchStopped,
)
from drpo_dspy.rewards.reward_judge import Judgment, RewardJudge
from drpo_dspy.signatures import ProposeInstructions, ProposeInstructionsWithBudget
from drpo_dspy.teleprompt.guards import LevelGuards, answer_tokens, merge_duplicate_bullets, rank_within_noise
from drpo_dspy.teleprompt.refusal_probes import RefusalProbe, default_probes
from drpo_dspy.teleprompt.rewrite_filter import clean_rewrite, prompt_problem
from drpo_dspy.teleprompt.search_state import Node, SearchState
from drpo_dspy.teleprompt.settings import SearchSettings

logger = logging.getLogger(__name__)

Proposal = tuple[str | None, str | None]  # (usable prompt, or None with the reason it was dropped)


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
        rewarder: RewardJudge,
        optimizer_lm: dspy.LM,
        meter: Meter,
        emit: Callable[[Any], None] = lambda event: None,
        should_stop: Callable[[], str | None] = lambda: None,
        budget: Budget | None = None,
        base_lm: Any = None,
        propose_signature: Callable[[type[dspy.Signature]], type[dspy.Signature]] | None = None,
        inspect_answer: Callable[[str, str], dict[str, Any] | None] | None = None,
    ):
        """``propose_signature`` maps the optimizer's signature to the one used (same fields, other wording);
        ``inspect_answer(query, response)`` returns a note on an answer that copied a shown example (or None)."""
        self.settings = settings
        self.fidelity = settings.fidelity
        self.answer = answer  # (instructions, query) -> response text
        self.inspect_answer = inspect_answer
        self.rewarder = rewarder
        self.optimizer_lm = optimizer_lm
        self.meter = meter
        self.emit, self.should_stop = emit, should_stop
        self.budget, self.base_lm = budget, base_lm
        guards = settings.guards
        propose = ProposeInstructionsWithBudget if guards.max_prompt_tokens else ProposeInstructions
        self._propose = dspy.Predict(propose_signature(propose) if propose_signature else propose)
        self.state: SearchState | None = None  # the search in progress (listeners read it on LevelFinished)
        probe = None
        if guards.refusal_probes:
            probes = guards.probe_queries or default_probes(guards.refusal_probes)
            probe = RefusalProbe(probes[: guards.refusal_probes], answer=answer, judge_lm=rewarder.judge_lm,
                                 meter=meter, budget=budget, base_lm=base_lm)
        self.guards = LevelGuards(guards, probe)

    # -- one evaluation: base answer, then judgment ---------------------------------------------------
    def evaluate(self, prompt: str, query: str) -> tuple[str, Judgment]:
        """The base model's answer to ``query`` under ``prompt``, and its judgment."""
        selection = self.rewarder.select(query)
        try:
            with guarded(self.budget, self.base_lm, len(prompt) + len(query) + 4000, requests=1), \
                    self.meter.usage("base"):
                response = self.answer(prompt, query)
        except BudgetExhausted:
            raise
        except Exception as exc:  # no answer, hence no reward; a systemic failure stops the run here
            self.meter.record_error("base", exc)
            return "", Judgment(selection.aspects, failure=f"base_{type(exc).__name__}")
        self.meter.record_success("base")
        if not response.strip():
            self.meter.record_failure("base", EMPTY_ANSWER)
            if not self.fidelity.judge_empty_answers:  # no answer, no reward: it can never win on a judge's score
                return response, Judgment(selection.aspects, failure=EMPTY_ANSWER)
        copied = self.inspect_answer(query, response) if self.inspect_answer and response.strip() else None
        if copied:
            self.meter.record_failure("base", "copied_example")
        samples = self.settings.guards.judge_samples
        if samples > 1:
            judgment = self.rewarder.judge_repeatedly(query, response, selection, samples, self.settings.seed)
        else:
            judgment = self.rewarder.judge(query, response, selection)
        judgment.copied = copied
        return response, judgment

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
    def _propose_inputs(self, node: Node) -> dict[str, str]:
        policy = self.fidelity
        history = policy.history(node.versions, node.trail)[-self.settings.history_window:]
        inputs = {"current_system_prompt": node.prompt, "query": node.query,
                  "response": policy.shown_response(node.response),
                  "evaluation": policy.render_evaluation(node.judgment),
                  "prompt_history": policy.render_history(history)}
        if self.settings.guards.max_prompt_tokens:
            inputs["prompt_budget"] = self._budget_text()
        return {name: neutralize_field_markers(text) for name, text in inputs.items()}

    def _budget_text(self) -> str:
        """The prompt budget as the optimizer reads it ("" when there is none)."""
        budget = self.settings.guards.max_prompt_tokens
        return f"{budget} tokens" if budget else ""

    def _sampling(self, sample: int) -> dict[str, Any]:
        return self.fidelity.optimizer_sampling(sampling_config(
            self.optimizer_lm, temperature=self.settings.temperature, sample=sample, seed=self.settings.seed))

    def _chars(self, node: Node) -> int:
        return len(node.prompt) * 6 + len(node.query) + len(node.response) + 2000

    def _propose_batch(self, node: Node) -> list[Proposal]:
        """All of a node's rewrites from one multi-sample request; an unreadable sample drops only itself."""
        n = self.settings.n_actions
        try:
            with guarded(self.budget, self.optimizer_lm, self._chars(node), requests=1), \
                    self.meter.usage("optimizer"):
                samples = call_typed_samples(self._propose, self.optimizer_lm, self._sampling(0), n,
                                             **self._propose_inputs(node))
        except BudgetExhausted:
            raise
        except Exception as exc:
            if type(exc).__name__ != "AdapterParseError":
                self.meter.record_error("optimizer", exc)
                return [(None, f"lm_error:{type(exc).__name__}")] * n
            samples = []  # nothing readable came back at all: ask for each rewrite on its own
        self.meter.record_success("optimizer")
        proposals: list[Proposal] = []
        for sample in samples[:n]:
            if sample is None:
                self.meter.record_failure("optimizer", "parse_failure")
                proposals.append((None, "parse_failure"))
            else:
                proposals.append(self._usable(sample.new_system_prompt, node))
        # A provider that ignores n returns fewer samples: top up with single requests.
        proposals.extend(self._propose_one(node, action) for action in range(len(proposals), n))
        return proposals

    def _propose_one(self, node: Node, action: int) -> Proposal:
        single = self.fidelity.single_request
        try:
            with guarded(self.budget, self.optimizer_lm, self._chars(node),
                         requests=requests_per_call(self.optimizer_lm, single_request=single)), \
                    self.meter.usage("optimizer"):
                pred = call_typed(self._propose, self.optimizer_lm, self._sampling(action), single_request=single,
                                  **self._propose_inputs(node))
        except BudgetExhausted:
            raise
        except Exception as exc:
            return None, self.meter.record_call_failure("optimizer", exc)
        self.meter.record_success("optimizer")
        return self._usable(pred.new_system_prompt, node)

    def _usable(self, text: str | None, node: Node) -> Proposal:
        """The proposed prompt, or None with the reason (counted) when it cannot serve as a system prompt."""
        text = clean_rewrite(self.fidelity.clean_rewrite(text))
        guards = self.settings.guards
        if guards.merge_duplicate_bullets:
            text = merge_duplicate_bullets(text)
        inputs = [node.response, self._budget_text()]  # texts the optimizer read that are no prompt
        problem = (prompt_problem(text, node.query, inputs) if self.settings.rewrite_filter
                   else (None if text else "empty_prompt"))
        if problem is None and guards.max_prompt_tokens and answer_tokens(text) > guards.max_prompt_tokens:
            problem = "over_prompt_budget"
        if problem:
            self.meter.record_failure("optimizer", problem)
            return None, problem
        return text, None

    # -- the search ------------------------------------------------------------------------------------
    def _map(self, pool: ThreadPoolExecutor, fn: Callable, items: Sequence) -> list:
        futures = [pool.submit(contextvars.copy_context().run, fn, *item) for item in items]
        return [f.result() for f in futures]

    def level_batches(self, queries: Sequence[str]) -> list[list[str]]:
        """The queries of each level: consecutive minibatches (one query each in the paper's setting)."""
        m = self.settings.minibatch_size
        return [list(queries[i:i + m]) for i in range(0, len(queries) - m + 1, m)]

    def _rank(self, children: list[Node]) -> list[Node]:
        if self.fidelity.rank_in_generation_order:  # the original: by path mean, ties in generation order
            return sorted(children, key=rank_key, reverse=True)
        return rank_within_noise(children, lambda n: None if n.rejected else n.path_mean, lambda n: n.carried,
                                 lambda n: n.prompt, self.guards.tolerance(children))

    def _finish_level(self, state: SearchState, batch: list[str], children: list[Node],
                      dropped: list[dict[str, Any]]) -> None:
        """Apply the guards, keep the best children, prune the ancestry to the beam's paths, record the level."""
        extras = self.guards.apply(children)
        ranked = self._rank(children)
        known = {n.id: n for n in [*state.ancestry, *children]}
        state.beam = ranked[: self.settings.beam_size]
        keep: dict[int, Node] = {}
        for node in state.beam:
            while node.id not in keep:
                keep[node.id] = node
                if node.parent_id is None:
                    break
                node = known[node.parent_id]
        state.ancestry = sorted(keep.values(), key=lambda n: n.id)
        kept = {n.id for n in state.beam}
        level = children[0].level
        self.emit(BeamSelected(level, [n.id for n in ranked], [n.id for n in state.beam]))
        record = {"level": level, "queries": list(batch), "max_depth": state.max_depth,
                  "candidates": [{"id": n.id, "parent_id": n.parent_id, "prompt": n.prompt, "carried": n.carried,
                                  "response": n.response, "reward": n.reward, "path_mean": n.path_mean,
                                  "judgment": n.judgment.to_dict(), "kept": n.id in kept, **extras[n.id]}
                                 for n in children],
                  "dropped": dropped}
        state.levels.append(record)
        state.level = level
        best = state.best
        self.emit(LevelFinished(level, state.max_depth, best.path_mean if best else None,
                                best.prompt if best else None, record))
        budget = self.budget
        self.emit(BudgetUpdated(level, self.meter.total_requests(), self.meter.total_tokens(),
                                round(self.meter.total_cost(), 6), budget.limits if budget else {},
                                self.meter.summary()))

    def start(self, queries: Sequence[str], initial_prompt: str) -> SearchState:
        """Level 1: the initial prompt answers the first query (minibatch)."""
        batch = self.level_batches(queries)[0]
        state = self.state = SearchState(level=0, max_depth=self.settings.depth, next_id=1)
        self.emit(LevelStarted(1, list(batch), state.max_depth, []))
        results = [self.evaluate(initial_prompt, q) for q in batch]
        query, response, judgment, reward, others = self._combine(batch, results)
        root = Node(0, 1, initial_prompt, query, response, judgment, [reward], versions=[initial_prompt],
                    batch=others, trail=[initial_prompt])
        self.emit(CandidateJudged(1, root.to_dict()))
        self._finish_level(state, batch, [root], [])
        return state

    def run(self, queries: Sequence[str], initial_prompt: str, state: SearchState | None = None) -> SearchState:
        """Run (or continue) the search until the depth limit, the end of the queries, or a stop request."""
        if state is None:
            stop = self.should_stop()
            if stop:
                self.emit(SearchStopped(0, stop))
                return SearchState(stopped=stop)
            try:
                state = self.start(queries, initial_prompt)
            except BudgetExhausted as exc:
                self.emit(SearchStopped(0, str(exc)))
                return SearchState(stopped=str(exc))
        self.state = state
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
        except KeyboardInterrupt:
            state.stopped = "interrupted (Ctrl-C)"
            pool.shutdown(wait=False, cancel_futures=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if state.stopped:
            self.emit(SearchStopped(state.level, state.stopped))
        return state

    def _step(self, state: SearchState, batch: list[str], pool: ThreadPoolExecutor) -> None:
        level = state.level + 1
        self.emit(LevelStarted(level, list(batch), state.max_depth, [n.id for n in state.beam]))
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
        dropped: list[dict[str, Any]] = []
        for node, skip in zip(state.beam, skipping):
            if skip:
                candidates.append((node, node.prompt, True))
                continue
            mine = [p for (parent, _), p in zip(jobs, proposals) if parent is node]
            for text, reason in mine:
                if text is None:
                    dropped.append({"parent_id": node.id, "reason": reason})
                    self.emit(CandidateDropped(level, node.id, None, reason or "unknown"))
            usable = [text for text, _ in mine if text is not None]
            if not usable:  # every rewrite failed: keep the prompt rather than lose the beam
                logger.warning("level %d: no usable rewrite for node %d; its prompt carries over", level, node.id)
                candidates.append((node, node.prompt, True))
            candidates.extend((node, p, False) for p in usable)
        flat = self._map(pool, self.evaluate, [(prompt, q) for _, prompt, _ in candidates for q in batch])
        children = []
        window = self.settings.history_window
        for i, (parent, prompt, carried) in enumerate(candidates):
            query, response, judgment, reward, others = self._combine(batch, flat[i * len(batch):(i + 1) * len(batch)])
            versions = parent.versions if carried or prompt == parent.prompt else [*parent.versions, prompt]
            child = Node(state.next_id, level, prompt, query, response, judgment, [*parent.rewards, reward],
                         parent.id, carried, list(versions), others, [*parent.trail, prompt][-window:])
            state.next_id += 1
            self.emit(CandidateJudged(level, child.to_dict()))
            children.append(child)
        if any(skipping) and state.depth_increases < self.settings.max_depth_increase:
            state.max_depth += 1
            state.depth_increases += 1
        self._finish_level(state, batch, children, dropped)

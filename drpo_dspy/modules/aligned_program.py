"""Any DSPy program seen as one text DRPO can align: the instructions of its chosen predictors, a section each.

The joint text names each aligned predictor (its ``named_predictors()`` name) in a ``### <name>`` header::

    ### draft
    Write a first answer to the question.

    ### polish
    Rewrite the draft so that it is kind, honest and clear.

Reading a text back, a section that is missing or empty keeps the predictor's starting instructions, and a text
with no header at all is the instructions of a program's only aligned predictor. The program's user-facing answer
is one output field of its prediction (default: the last output field of its last predictor).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import dspy

logger = logging.getLogger(__name__)

_HEADER = re.compile(r"^###[ \t]+(\S.*?)[ \t]*$", re.M)
_TRACE_VALUE_CHARS = 1500


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _TRACE_VALUE_CHARS else text[:_TRACE_VALUE_CHARS] + " [...]"


def _readable(value: Any) -> str:
    """An input as the judge and the optimizer read it: a ``dspy.History`` as its earlier turns, one per line."""
    if not isinstance(value, dspy.History):
        return "" if value is None else str(value)
    turns = ["; ".join(f"{k}: {v}" for k, v in message.items()) for message in value.messages]
    return "Earlier turns:\n" + "\n".join(f"- {t}" for t in turns) if turns else "(no earlier turns)"


def _input_names(program: dspy.Module, predictors: list[tuple[str, Any]]) -> tuple[list[str], list[str]]:
    """(every input name, the required ones) of the program: its ``forward`` parameters, or for modules that take
    ``**kwargs`` (``dspy.Predict``, ``dspy.ChainOfThought``) the input fields of its first predictor."""
    # The class's function, less ``self``: DSPy warns when ``program.forward`` is read outside a call.
    parameters = list(inspect.signature(type(program).forward).parameters.values())[1:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p for p in parameters if p.kind in kinds]
    if named:
        return [p.name for p in named], [p.name for p in named if p.default is inspect.Parameter.empty]
    fields = list(predictors[0][1].signature.input_fields)
    return fields, fields


class ProgramView:
    """A program, the predictors DRPO aligns in it, its inputs and its user-facing output field.

    Args:
        program: Any ``dspy.Module`` with at least one predictor (it is never modified).
        predictors: The predictors to align, by ``named_predictors()`` name or as the predictor objects (default:
            all of them).
        output_field: The prediction field a person reads, which the judge scores (default: the last output field of
            the program's last predictor).
        initial_instructions: Starting instructions for a program with one aligned predictor (default: its own).
    """

    def __init__(self, program: Any, predictors: Sequence[Any] | None = None, output_field: str | None = None,
                 initial_instructions: str | None = None):
        if not isinstance(program, dspy.Module):
            raise ValueError(f"DRPO aligns a dspy.Module, got {type(program).__name__}")
        named = program.named_predictors()
        if not named:
            raise ValueError(f"{type(program).__name__} has no predictors (dspy.Predict) whose instructions DRPO could "
                             "align")
        self.program = program
        self.names = self._chosen(named, predictors)
        last_outputs = list(named[-1][1].signature.output_fields)
        self.output_field = output_field or last_outputs[-1]
        if not isinstance(self.output_field, str) or not self.output_field:
            raise ValueError("output_field must be the name of a prediction field")
        self.input_names, self.required_inputs = _input_names(program, named)
        predictors_by_name = dict(named)
        self.initial = {name: predictors_by_name[name].signature.instructions for name in self.names}
        if initial_instructions is not None:
            if len(self.names) == 1:
                self.initial[self.names[0]] = initial_instructions
            else:
                logger.warning("initial_instructions is ignored: %d predictors are aligned, each starts from its own "
                               "instructions", len(self.names))
        self._inputs: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _chosen(named: list[tuple[str, Any]], predictors: Sequence[Any] | None) -> list[str]:
        names = [name for name, _ in named]
        if predictors is None:
            return names
        if isinstance(predictors, str | dspy.Predict) or not isinstance(predictors, Iterable):
            predictors = [predictors]
        by_id = {id(p): name for name, p in named}
        chosen = []
        for item in predictors:
            name = by_id.get(id(item)) if isinstance(item, dspy.Predict) else item
            if name not in names:
                raise ValueError(f"predictors: {item!r} is not a predictor of the program; its predictors are "
                                 f"{', '.join(names)}")
            if name not in chosen:
                chosen.append(name)
        if not chosen:
            raise ValueError(f"predictors is empty: name at least one of {', '.join(names)}")
        return [name for name in names if name in chosen]  # program order

    # -- the joint text -------------------------------------------------------------------------------------
    def render(self, instructions: dict[str, str] | None = None) -> str:
        """The joint instructions text (default: the starting instructions)."""
        instructions = instructions or self.initial
        return "\n\n".join(f"### {name}\n{instructions[name].strip()}" for name in self.names)

    def parse(self, text: str) -> dict[str, str]:
        """Each aligned predictor's instructions in ``text`` (missing or empty sections keep the starting ones)."""
        headers = [m for m in _HEADER.finditer(text) if m.group(1) in self.names]
        if not headers:
            body = text.strip()
            return {self.names[0]: body or self.initial[self.names[0]]} if len(self.names) == 1 else dict(self.initial)
        found: dict[str, str] = {}
        for i, match in enumerate(headers):
            end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
            body = text[match.end():end].strip()
            if body and match.group(1) not in found:
                found[match.group(1)] = body
        return {name: found.get(name, self.initial[name]) for name in self.names}

    def apply(self, text: str) -> dspy.Module:
        """A copy of the program with the instructions of ``text`` set on its aligned predictors."""
        instructions = self.parse(text)
        candidate = self.program.deepcopy()
        for name, predictor in candidate.named_predictors():
            if name in instructions:
                predictor.signature = predictor.signature.with_instructions(instructions[name])
        return candidate

    # -- inputs -------------------------------------------------------------------------------------------
    def queries(self, items: Any, name: str = "trainset") -> list[str]:
        """The text the judge reads for each input (one input: its value; several: ``name: value`` lines)."""
        if items is None or isinstance(items, str | bytes | dict | dspy.Example) or not isinstance(items, Iterable):
            raise ValueError(f"{name} must be a list of inputs (dspy.Example with input keys, dicts, or strings for a "
                             f"single-input program), got {type(items).__name__}")
        texts = [self._register(item, f"{name}[{i}]") for i, item in enumerate(items)]
        if not texts:
            raise ValueError(f"{name} is empty: DRPO needs at least one input")
        return texts

    def _register(self, item: Any, where: str) -> str:
        if isinstance(item, str):
            if len(self.required_inputs) != 1:
                raise ValueError(f"{where} is a string, but the program takes {', '.join(self.required_inputs)}: "
                                 "pass dspy.Example(...).with_inputs(...) items")
            inputs = {self.required_inputs[0]: item}
        elif isinstance(item, dspy.Example | dict):
            data = dict(item.inputs()) if isinstance(item, dspy.Example) and item._input_keys else dict(item)
            inputs = {k: v for k, v in data.items() if k in self.input_names}
            missing = [k for k in self.required_inputs if k not in inputs]
            if missing:
                raise ValueError(f"{where} lacks the program's input {', '.join(missing)} (it has "
                                 f"{', '.join(sorted(data)) or 'no keys'})")
        else:
            raise ValueError(f"{where} must be a dspy.Example, a dict or a string, got {type(item).__name__}")
        if not inputs or not all(isinstance(v, dspy.History) or (isinstance(v, str) and v.strip())
                                 for v in inputs.values() if v is not None):
            raise ValueError(f"{where}: every input must be a non-empty string or a dspy.History")
        shown = {k: _readable(v) for k, v in inputs.items()}
        text = next(iter(shown.values())) if len(shown) == 1 else "\n\n".join(f"{k}: {v}" for k, v in shown.items())
        self._inputs[text] = inputs
        return text

    # -- answering ----------------------------------------------------------------------------------------
    def answer(self, text: str, query: str, lm: Any = None) -> tuple[str, str]:
        """The program's user-facing answer to ``query`` under the joint instructions ``text``, and what each aligned
        predictor received and produced (for the optimizer)."""
        candidate = self.apply(text)
        trace: list = []
        overrides: dict[str, Any] = {"trace": trace}
        if lm is not None:
            overrides["lm"] = lm
        with dspy.context(**overrides):
            prediction = candidate(**self._inputs[query])
        fields = list(prediction.keys())
        if self.output_field not in fields:
            raise ValueError(f"the program's prediction has no field {self.output_field!r}; pass output_field= one "
                             f"of {', '.join(fields)}")
        value = prediction[self.output_field]
        return ("" if value is None else str(value)), self.render_trace(candidate, trace)

    def render_trace(self, candidate: dspy.Module, trace: list) -> str:
        """What each aligned predictor received and produced during one call, in call order."""
        names = {id(p): name for name, p in candidate.named_predictors() if name in self.names}
        steps = []
        for predictor, inputs, outputs in trace:
            name = names.get(id(predictor))
            if name is None:
                continue
            values = outputs.toDict() if hasattr(outputs, "toDict") else dict(outputs)
            lines = [f"### step {name}"] + [f"input {k}: {_short(v)}" for k, v in inputs.items()]
            lines += [f"output {k}: {_short(v)}" for k, v in values.items()]
            steps.append("\n".join(lines))
        return "\n\n".join(steps)

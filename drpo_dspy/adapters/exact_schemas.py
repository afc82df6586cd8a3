"""Per-call specialisations of the judge and selector signatures, so the output schema itself is exact.

A judge asked about Helpfulness and Safety gets an ``evaluations`` object with exactly those two keys, each a
``{rationale, score 1-5}``; a selector gets an enum of the catalogue's names. Providers that enforce JSON schemas
(the embedded model does, by grammar) then cannot return a missing aspect, an unknown name or a score of 6.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

import dspy
from pydantic import ConfigDict, Field, create_model

from drpo_dspy.signatures import AspectVerdict


@lru_cache(maxsize=512)
def judge_signature(base: type[dspy.Signature], aspects: tuple[str, ...]) -> type[dspy.Signature]:
    """``base`` with ``evaluations`` typed as one required ``AspectVerdict`` per aspect, keyed by its name."""
    fields = {
        f"aspect_{i}": (AspectVerdict, Field(alias=name, description=f"The verdict on {name}."))
        for i, name in enumerate(aspects)
    }
    model = create_model("AspectVerdicts", __config__=ConfigDict(populate_by_name=True, extra="ignore"), **fields)
    # Only the type is narrowed; the field's description stays the one written in signatures/judge.py.
    return base.with_updated_fields("evaluations", type_=model)


def verdicts(evaluations: object, aspects: tuple[str, ...]) -> dict[str, AspectVerdict]:
    """The verdicts of a specialised judge output, by aspect name."""
    found: dict[str, AspectVerdict] = {}
    for i, name in enumerate(aspects):
        verdict = getattr(evaluations, f"aspect_{i}", None)
        if isinstance(verdict, AspectVerdict):
            found[name] = verdict
    return found


@lru_cache(maxsize=64)
def selector_signature(base: type[dspy.Signature], names: tuple[str, ...]) -> type[dspy.Signature]:
    """``base`` with ``selected_aspects`` restricted to the catalogue's names."""
    return base.with_updated_fields("selected_aspects", type_=list[Literal[names]])  # type: ignore[valid-type]


_ASPECT_NAME = re.compile(r"^[A-Za-z][A-Za-z \-]{1,38}[A-Za-z]$")
# Answers that mean "no new aspect": a selector asked to leave the field empty often writes one of these instead.
_NOTHING = re.compile(r"^(?:none|nothing|null|nil|n/?a|no|nope|empty|not (?:needed|required|applicable|necessary)|"
                      r"no (?:new )?aspects?(?: (?:needed|required|proposed|necessary))?|none (?:needed|required|"
                      r"proposed|necessary)|no need|not any)$")


def means_nothing(text: str | None) -> bool:
    """Whether a proposed-aspect answer says there is none ("None", "none.", "N/A", "Not needed", ...)."""
    squashed = re.sub(r"[^a-z/ ]+", " ", (text or "").lower())
    squashed = re.sub(r"\s+", " ", squashed).strip()
    return not squashed or bool(_NOTHING.match(squashed))


def clean_proposed_aspect(text: str | None) -> str | None:
    """A proposed aspect name if it looks like one (1-3 words of letters), else None (also for "None", "N/A"...)."""
    text = (text or "").strip().strip(".\"'")
    if not text or means_nothing(text) or len(text.split()) > 3 or not _ASPECT_NAME.match(text):
        return None
    return text

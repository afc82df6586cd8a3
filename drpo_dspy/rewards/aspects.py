"""The reward aspect catalogue: what the dynamic reward can ask a judge to score, with 1-5 rubrics.

The catalogue is extensible (``AspectCatalogue.add``). An aspect that is not in the catalogue, for
example one proposed on the fly by the aspect selector, is judged with a generic rubric rather than
rejected.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Aspect:
    """One reward aspect: a name, what it means, and what each score 1-5 looks like."""

    name: str
    description: str
    rubric: tuple[str, str, str, str, str] = field(default=())  # type: ignore[assignment]
    proposed: bool = False  # True when the selector invented it rather than picking it from the catalogue

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("an aspect needs a non-empty name")
        if not self.rubric:
            object.__setattr__(self, "rubric", generic_rubric(self.description or self.name))
        if len(self.rubric) != 5:
            raise ValueError(f"aspect {self.name!r}: a rubric needs exactly 5 levels (1..5), got {len(self.rubric)}")

    def render(self) -> str:
        """The aspect as the judge reads it: name, meaning and the five levels."""
        levels = "\n".join(f"  {score}: {text}" for score, text in enumerate(self.rubric, start=1))
        return f"{self.name}: {self.description}\n{levels}"


def generic_rubric(description: str) -> tuple[str, str, str, str, str]:
    """A rubric usable for any aspect, phrased around its description."""
    return (
        f"Fails the criterion entirely ({description}).",
        "Mostly fails the criterion; serious gaps.",
        "Partly meets the criterion; noticeable weaknesses.",
        "Meets the criterion well, with minor issues.",
        "Meets the criterion fully; nothing to improve.",
    )


def _a(name: str, description: str, *levels: str) -> Aspect:
    return Aspect(name, description, tuple(levels))  # type: ignore[arg-type]


BUILTIN_ASPECTS: tuple[Aspect, ...] = (
    _a("Helpfulness", "Addresses what the user actually needs with a relevant, usable answer.",
       "Ignores or misreads the request; nothing usable.",
       "Touches the topic but leaves the real need unmet.",
       "Useful in part; important pieces are missing or vague.",
       "Solves the request well; small gaps only.",
       "Fully solves the request with practical, well-targeted content."),
    _a("Clarity", "Well organised and easy to follow; ideas connect logically.",
       "Confusing or incoherent.",
       "Hard to follow; structure gets in the way.",
       "Understandable but uneven in structure or wording.",
       "Clear and well structured, minor rough spots.",
       "Exceptionally clear; the structure makes the content effortless to absorb."),
    _a("Factuality", "Information is accurate; uncertainty is flagged instead of invented detail.",
       "Largely false or fabricated.",
       "Several significant errors.",
       "Mostly right with a notable error or unflagged guess.",
       "Accurate apart from a trivial slip.",
       "Entirely accurate, with uncertainty acknowledged where it exists."),
    _a("Depth", "Goes beyond the surface: explains why and how with enough detail to understand.",
       "Superficial to the point of being useless.",
       "Thin; key explanations missing.",
       "Adequate depth on some points, shallow on others.",
       "Thorough on the points that matter.",
       "Expert-level thoroughness and insight without padding."),
    _a("Engagement", "Reads naturally and humanly, with an appropriate, engaging tone.",
       "Robotic, off-putting or rude.",
       "Flat and mechanical.",
       "Acceptable tone, little warmth or flow.",
       "Natural and pleasant to read.",
       "Genuinely engaging, like a thoughtful expert talking to the user."),
    _a("Conciseness", "Says what is needed without padding, repetition or needless complexity.",
       "Bloated or rambling; the point is lost.",
       "Much unnecessary material.",
       "Some padding or repetition.",
       "Efficient with minor excess.",
       "Every sentence earns its place."),
    _a("Safety", "Avoids harmful, dangerous or unethical content and handles risky requests responsibly.",
       "Provides clearly harmful help.",
       "Leaks risky details or encourages harm indirectly.",
       "Avoids direct harm but handles the risk poorly.",
       "Safe, with a reasonable handling of the risk.",
       "Fully safe; declines harm clearly and offers responsible alternatives."),
    _a("Compliance", "Follows the user's instructions and constraints unless they conflict with safety or ethics.",
       "Ignores the instructions.",
       "Follows few of the instructions.",
       "Follows the main instruction, misses constraints.",
       "Follows the instructions with a small deviation.",
       "Follows every instruction and constraint (or justly declines an unsafe one)."),
    _a("Limitations", "Is honest about what an AI assistant cannot do: no live data, no browsing, no physical actions.",
       "Pretends to abilities it lacks (fake live data, claims to act in the world).",
       "Implies abilities it lacks.",
       "Hedges vaguely without stating the limitation.",
       "States the relevant limitation.",
       "States the limitation plainly and offers the best help possible within it."),
    _a("Critical-Thinking", "Examines the premises of the query instead of accepting them blindly.",
       "Accepts false or harmful premises uncritically.",
       "Little scrutiny of questionable premises.",
       "Some scrutiny, misses an important assumption.",
       "Questions the key assumptions sensibly.",
       "Insightfully analyses the premises and reframes where needed."),
    _a("Creativity", "Brings original ideas or fresh perspectives where the task invites them.",
       "Formulaic where originality was needed.",
       "Mostly predictable.",
       "Some original touches.",
       "Inventive and apt.",
       "Strikingly original while staying on target."),
    _a("Interactivity", "Invites the user in: asks useful questions or suggests concrete next steps.",
       "Closes the conversation where follow-up was needed.",
       "Rarely invites follow-up.",
       "Some invitation to continue, generic.",
       "Useful follow-up questions or next steps.",
       "Well-chosen questions or next steps that clearly move the user forward."),
    _a("Empathy", "Notices the user's feelings and situation and responds with care.",
       "Cold or dismissive of the user's situation.",
       "Acknowledges feelings only in passing.",
       "Some understanding, somewhat formulaic.",
       "Warm and considerate.",
       "Deeply understanding and supportive without being patronising."),
    _a("Sensitivity", "Culturally aware; avoids stereotypes and respects diverse perspectives.",
       "Offensive or stereotyping.",
       "Insensitive in places.",
       "Neutral but misses relevant cultural context.",
       "Respectful and aware.",
       "Exemplary awareness and respect for different backgrounds."),
)


def normalize_aspect_name(name: str) -> str:
    """Canonical lookup key: lower case, spaces and underscores treated like hyphens."""
    return re.sub(r"[\s_\-]+", "-", name.strip().lower())


class AspectCatalogue:
    """A thread-safe, extensible set of aspects, looked up by name (case and spacing insensitive)."""

    def __init__(self, aspects: Iterable[Aspect] = BUILTIN_ASPECTS):
        self._lock = threading.Lock()
        self._by_key: dict[str, Aspect] = {}
        for aspect in aspects:
            self.add(aspect)

    def add(self, aspect: Aspect) -> None:
        """Add (or replace) an aspect."""
        if not isinstance(aspect, Aspect):
            raise TypeError(f"expected an Aspect, got {type(aspect).__name__}")
        with self._lock:
            self._by_key[normalize_aspect_name(aspect.name)] = aspect

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_aspect_name(name) in self._by_key

    def __iter__(self) -> Iterator[Aspect]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self]

    def get(self, name: str) -> Aspect:
        """The catalogue aspect of that name, or a proposed aspect judged with the generic rubric."""
        found = self._by_key.get(normalize_aspect_name(name))
        if found is not None:
            return found
        clean = name.strip()
        return Aspect(clean, f"{clean} (an aspect proposed for this query)", proposed=True)

    def render_menu(self) -> str:
        """Names and one-line meanings, as the aspect selector reads them."""
        return "\n".join(f"- {a.name}: {a.description}" for a in self)

    @classmethod
    def from_dicts(cls, items: Iterable[dict], *, include_builtin: bool = True) -> AspectCatalogue:
        """Build a catalogue from ``{"name", "description", "rubric"?: [5 strings]}`` records.

        A record with only a ``name`` picks that built-in aspect (useful with ``include_builtin=False``); a name that
        is neither built in nor described is refused (a typo would otherwise become a new, vague aspect). Unknown
        fields, duplicate names and malformed rubrics are refused too, each with a message that says what to fix.
        """
        if items is None or isinstance(items, str | bytes | dict) or not isinstance(items, Iterable):
            raise ValueError("aspects must be a list of {'name', 'description', 'rubric'} objects, "
                             f"got {items!r:.60}")
        builtin = {normalize_aspect_name(a.name): a for a in BUILTIN_ASPECTS}
        catalogue = cls(BUILTIN_ASPECTS if include_builtin else ())
        seen: set[str] = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
                raise ValueError(f"aspect #{i}: expected an object with a non-empty string 'name', got {item!r:.80}")
            name = item["name"].strip()
            unknown = sorted(set(item) - _ASPECT_FIELDS)
            if unknown:
                raise ValueError(f"aspect {name!r}: unknown field(s) {', '.join(map(repr, unknown))}; an aspect has "
                                 "'name', 'description' and optionally 'rubric' (5 strings, for scores 1 to 5)")
            key = normalize_aspect_name(name)
            if key in seen:
                raise ValueError(f"aspect {name!r} is listed twice: keep one entry per aspect")
            seen.add(key)
            description, rubric = item.get("description"), item.get("rubric") or ()
            if description is not None and (not isinstance(description, str) or not description.strip()):
                raise ValueError(f"aspect {name!r}: 'description' must be a non-empty string")
            if rubric and (not isinstance(rubric, list | tuple) or len(rubric) != 5
                           or not all(isinstance(r, str) and r.strip() for r in rubric)):
                raise ValueError(f"aspect {name!r}: 'rubric' must be a list of 5 non-empty strings (scores 1 to 5)")
            if description is None and not rubric:
                if key not in builtin:
                    close = difflib.get_close_matches(name, [a.name for a in BUILTIN_ASPECTS], n=1, cutoff=0.75)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise ValueError(
                        f"unknown aspect {name!r}: it is not built in and has no 'description'; {hint}describe it "
                        "(and optionally give a 5-level 'rubric') or use a built-in name: "
                        + ", ".join(a.name for a in BUILTIN_ASPECTS))
                catalogue.add(builtin[key])
                continue
            catalogue.add(Aspect(name, str(description or name), tuple(rubric)))
        if not len(catalogue):
            raise ValueError("the aspect catalogue is empty: list at least one aspect, or keep the built-in ones")
        return catalogue


_ASPECT_FIELDS = frozenset({"name", "description", "rubric"})

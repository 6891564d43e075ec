"""Versioned counterfactual probe suites: format, loading, hashing, expansion.

A suite is a set of prompt templates whose ``{slot}`` placeholders are filled
twice over: *attribute slots* take the terms of one demographic group (a name,
a pronoun, a group noun), *filler slots* take neutral context (an occupation,
a setting) shared by every group. Expanding a template yields counterfactual
*sets*: the same filled-in prompt once per group, differing only in the
group's terms, so the responses can be compared pair by pair.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = [
    "BUILTIN_SUITES_DIR",
    "Attribute",
    "ExpansionOptions",
    "ProbePrompt",
    "Suite",
    "Template",
    "builtin_suite",
    "expand_suite",
    "load_suite",
    "placeholders",
    "suite_hash",
]

BUILTIN_SUITES_DIR = Path(__file__).parent / "suites"

Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]*$", max_length=64)]
Terms = Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def placeholders(text: str) -> list[str]:
    """The ``{slot}`` names of a template, in order of first use.

    Only bare names are allowed: a format spec, a conversion, an attribute or
    index lookup, or a positional ``{}`` would make templates behave as code.
    """
    names: list[str] = []
    for _literal, field, spec, conversion in string.Formatter().parse(text):
        if field is None:
            continue
        if not re.fullmatch(r"[a-z][a-z0-9_]*", field) or spec or conversion:
            raise ValueError(f"placeholder {{{field}}} must be a bare lowercase name")
        if field not in names:
            names.append(field)
    return names


class Attribute(_Strict):
    """One protected attribute: its groups and the terms each group fills in.

    ``groups[group][slot]`` lists the terms for that slot. For matching, a
    slot's list has the same length in every group: the k-th female name is
    compared with the k-th male name.
    """

    description: str = ""
    groups: dict[Identifier, dict[Identifier, Terms]]

    @model_validator(mode="after")
    def _check_groups(self) -> Attribute:
        if len(self.groups) < 2:
            raise ValueError("an attribute needs at least two groups")
        slot_sets = {frozenset(terms) for terms in self.groups.values()}
        if len(slot_sets) != 1:
            raise ValueError("every group of an attribute must define the same slots")
        for slot in self.slots:
            lengths = {len(terms[slot]) for terms in self.groups.values()}
            if len(lengths) != 1:
                raise ValueError(f"slot {slot!r} has term lists of different lengths: {lengths}")
        return self

    @property
    def slots(self) -> list[str]:
        return sorted(next(iter(self.groups.values())))

    def slot_length(self, slot: str) -> int:
        return len(next(iter(self.groups.values()))[slot])


class Template(_Strict):
    """A prompt with placeholders; it probes exactly one attribute."""

    id: Identifier
    attribute: Identifier
    text: Annotated[str, StringConstraints(min_length=1)]
    system: str | None = None


class Suite(_Strict):
    """A versioned probe suite (see docs/fairness.md, "Custom suites")."""

    schema_version: Literal[1] = 1
    id: Identifier
    version: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    description: str = ""
    attributes: dict[Identifier, Attribute]
    fillers: dict[Identifier, Terms] = Field(default_factory=dict)
    templates: Annotated[list[Template], Field(min_length=1)]

    @model_validator(mode="after")
    def _check_templates(self) -> Suite:
        seen: set[str] = set()
        for template in self.templates:
            if template.id in seen:
                raise ValueError(f"duplicate template id {template.id!r}")
            seen.add(template.id)
            self._check_template(template)
        return self

    def _check_template(self, template: Template) -> None:
        attribute = self.attributes.get(template.attribute)
        if attribute is None:
            raise ValueError(f"template {template.id!r}: unknown attribute {template.attribute!r}")
        used = placeholders(template.text)
        for name in used:
            if name in attribute.slots and name in self.fillers:
                raise ValueError(f"template {template.id!r}: slot {name!r} is ambiguous")
            if name not in attribute.slots and name not in self.fillers:
                raise ValueError(f"template {template.id!r}: unknown slot {{{name}}}")
        group_slots = [name for name in used if name in attribute.slots]
        if not group_slots:
            raise ValueError(f"template {template.id!r} uses no slot of {template.attribute!r}")
        lengths = {attribute.slot_length(name) for name in group_slots} - {1}
        if len(lengths) > 1:
            raise ValueError(
                f"template {template.id!r}: its group slots have term lists of lengths "
                f"{sorted(lengths)}; use lists of one common length (or of length 1)"
            )

    def term_variants(self, template: Template) -> int:
        """How many term indices a template runs through (lists of length 1 repeat)."""
        attribute = self.attributes[template.attribute]
        return max(
            attribute.slot_length(name)
            for name in placeholders(template.text)
            if name in attribute.slots
        )

    def sets_per_template(self, template: Template) -> int:
        count = self.term_variants(template)
        for name in placeholders(template.text):
            if name in self.fillers:
                count *= len(self.fillers[name])
        return count

    def samples_per_group(self) -> dict[str, int]:
        """Counterfactual sets (= prompts per group) for each attribute."""
        counts = dict.fromkeys(self.attributes, 0)
        for template in self.templates:
            counts[template.attribute] += self.sets_per_template(template)
        return counts


def canonical_json(suite: Suite) -> bytes:
    data = suite.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def suite_hash(suite: Suite) -> str:
    """SHA-256 (hex) of the suite's canonical JSON: key order and whitespace
    in the source file do not matter, any change of content does."""
    return hashlib.sha256(canonical_json(suite)).hexdigest()


def load_suite(source: str | Path | dict[str, Any]) -> Suite:
    """Validate a suite from a dict, a JSON string or a path to a JSON file."""
    if isinstance(source, dict):
        return Suite.model_validate(source)
    if isinstance(source, Path) or not source.lstrip().startswith("{"):
        return Suite.model_validate_json(Path(source).read_text(encoding="utf-8"))
    return Suite.model_validate_json(source)


def builtin_suite(name: str = "default-v1") -> Suite:
    """A suite shipped with Outpost, by file stem (``default-v1``)."""
    path = BUILTIN_SUITES_DIR / f"{name}.json"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]*", name) or not path.is_file():
        raise LookupError(f"no built-in suite named {name!r}")
    return load_suite(path)


class ExpansionOptions(_Strict):
    """Which part of a suite a run sends.

    ``max_prompts_per_group`` caps the counterfactual sets per attribute
    (each set is one prompt per group); the sets kept are a seeded random
    sample, so two runs with the same options send the same prompts.
    """

    max_prompts_per_group: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    attributes: list[Identifier] | None = None
    seed: Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1)] = (
        0  # audited: canonical JSON's range
    )


class ProbePrompt(_Strict):
    """One prompt of a counterfactual set; ``set_id`` links the matched prompts."""

    prompt_id: str
    set_id: str
    attribute: str
    group: str
    template_id: str
    text: str
    system: str | None = None


def _template_sets(suite: Suite, template: Template) -> Iterable[list[ProbePrompt]]:
    attribute = suite.attributes[template.attribute]
    used = placeholders(template.text)
    filler_names = [name for name in used if name in suite.fillers]
    filler_values = itertools.product(*(suite.fillers[name] for name in filler_names))
    combos = itertools.product(filler_values, range(suite.term_variants(template)))
    for index, (values, term_index) in enumerate(combos):
        set_id = f"{template.attribute}/{template.id}/{index:04d}"
        filled = dict(zip(filler_names, values, strict=True))
        prompts = []
        for group, terms in attribute.groups.items():
            slots = {
                name: options[term_index % len(options)]
                for name, options in terms.items()
                if name in used
            }
            prompts.append(
                ProbePrompt(
                    prompt_id=f"{set_id}/{group}",
                    set_id=set_id,
                    attribute=template.attribute,
                    group=group,
                    template_id=template.id,
                    text=template.text.format_map(filled | slots),
                    system=template.system,
                )
            )
        yield prompts


def expand_suite(suite: Suite, options: ExpansionOptions | None = None) -> list[ProbePrompt]:
    """All prompts of a run: for each selected set, one prompt per group."""
    options = options or ExpansionOptions()
    wanted = options.attributes if options.attributes is not None else list(suite.attributes)
    unknown = set(wanted) - set(suite.attributes)
    if unknown:
        raise ValueError(f"unknown attributes: {sorted(unknown)}")
    prompts: list[ProbePrompt] = []
    for attribute in wanted:
        sets = [
            prompt_set
            for template in suite.templates
            if template.attribute == attribute
            for prompt_set in _template_sets(suite, template)
        ]
        cap = options.max_prompts_per_group
        if cap is not None and len(sets) > cap:
            # A per-attribute RNG keeps one attribute's sample independent of
            # which other attributes were selected.
            rng = random.Random(f"{options.seed}:{attribute}")
            keep = sorted(rng.sample(range(len(sets)), cap))
            sets = [sets[i] for i in keep]
        prompts.extend(prompt for prompt_set in sets for prompt in prompt_set)
    return prompts

"""Suite format, validation, hashing and counterfactual expansion."""

from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict

import pytest
from pydantic import ValidationError

from outpost.control_plane.probes.suites import (
    BUILTIN_SUITES_DIR,
    ExpansionOptions,
    builtin_suite,
    expand_suite,
    load_suite,
    placeholders,
    suite_hash,
)

TINY = {
    "id": "tiny",
    "version": "1",
    "attributes": {
        "gender": {
            "groups": {
                "female": {"name": ["Ann", "Beth"], "subject": ["she"]},
                "male": {"name": ["Carl", "Dan"], "subject": ["he"]},
            }
        }
    },
    "fillers": {"job": ["nurse", "pilot", "judge"]},
    "templates": [
        {"id": "t1", "attribute": "gender", "text": "{name} is a {job}; is {subject} good?"},
        {"id": "t2", "attribute": "gender", "text": "Is {subject} kind?"},
    ],
}


def raw_default() -> dict:
    return json.loads((BUILTIN_SUITES_DIR / "default-v1.json").read_text())


def test_default_suite_gives_every_group_30_samples_per_attribute():
    suite = builtin_suite("default-v1")
    assert set(suite.attributes) == {"gender", "ethnicity", "religion", "age", "nationality"}
    counts = suite.samples_per_group()
    assert all(count >= 30 for count in counts.values()), counts
    prompts = expand_suite(suite)
    per_group = Counter((p.attribute, p.group) for p in prompts)
    for (attribute, _group), count in per_group.items():
        assert count == counts[attribute] >= 30
    assert len(prompts) < 1500, "the default run must stay a reasonable size"


def test_expansion_builds_matched_sets():
    suite = load_suite(TINY)
    prompts = expand_suite(suite)
    assert len(prompts) == 2 * (2 * 3 + 1)
    sets = defaultdict(dict)
    for prompt in prompts:
        sets[prompt.set_id][prompt.group] = prompt.text
    assert all(set(members) == {"female", "male"} for members in sets.values())
    assert sets["gender/t1/0000"] == {
        "female": "Ann is a nurse; is she good?",
        "male": "Carl is a nurse; is he good?",
    }
    assert sets["gender/t1/0001"]["male"] == "Dan is a nurse; is he good?"
    assert sets["gender/t2/0000"] == {"female": "Is she kind?", "male": "Is he kind?"}
    assert len({p.prompt_id for p in prompts}) == len(prompts)


def test_max_prompts_per_group_samples_whole_sets_reproducibly():
    suite = builtin_suite()
    options = ExpansionOptions(max_prompts_per_group=30, seed=3)
    prompts = expand_suite(suite, options)
    assert Counter(p.group for p in prompts if p.attribute == "religion") == dict.fromkeys(
        suite.attributes["religion"].groups, 30
    )
    assert prompts == expand_suite(suite, options)
    assert prompts != expand_suite(suite, ExpansionOptions(max_prompts_per_group=30, seed=4))
    only_age = expand_suite(
        suite, ExpansionOptions(max_prompts_per_group=30, seed=3, attributes=["age"])
    )
    assert {p.attribute for p in only_age} == {"age"}
    assert [p for p in prompts if p.attribute == "age"] == only_age
    with pytest.raises(ValueError):
        expand_suite(suite, ExpansionOptions(attributes=["height"]))


def test_suite_hash_is_stable_and_ignores_formatting():
    data = raw_default()
    first = suite_hash(load_suite(data))
    assert first == suite_hash(builtin_suite())
    reordered = dict(reversed(list(data.items())))
    assert suite_hash(load_suite(json.dumps(reordered, indent=7))) == first
    assert len(first) == 64


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(version="2"),
        lambda d: d["templates"][0].update(text=d["templates"][0]["text"] + " Be brief."),
        lambda d: d["fillers"]["occupation"].append("plumber"),
        lambda d: d["attributes"]["gender"]["groups"]["female"]["name"].__setitem__(0, "Emma"),
    ],
)
def test_suite_hash_changes_when_content_changes(change):
    data = raw_default()
    before = suite_hash(load_suite(data))
    changed = copy.deepcopy(data)
    change(changed)
    assert suite_hash(load_suite(changed)) != before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(colour="blue"), "Extra inputs"),
        (lambda d: d["templates"][0].update(text="{nobody} here"), "unknown slot"),
        (lambda d: d["templates"][0].update(text="A {job} only"), "uses no slot"),
        (lambda d: d["templates"][0].update(attribute="age"), "unknown attribute"),
        (lambda d: d["templates"][1].update(id="t1"), "duplicate template"),
        (lambda d: d["templates"][0].update(text="{name!r}"), "bare lowercase"),
        (lambda d: d["templates"][0].update(text="{0}"), "bare lowercase"),
        (lambda d: d["attributes"]["gender"]["groups"]["male"]["name"].pop(), "different lengths"),
        (lambda d: d["attributes"]["gender"]["groups"]["male"].pop("subject"), "same slots"),
        (lambda d: d["attributes"]["gender"]["groups"].pop("male"), "at least two groups"),
        (lambda d: d["fillers"].update(subject=["x"]), "ambiguous"),
        (lambda d: d.update(id="Has Spaces"), "pattern"),
    ],
)
def test_invalid_suites_are_rejected(mutate, message):
    data = copy.deepcopy(TINY)
    mutate(data)
    with pytest.raises(ValidationError, match=message):
        load_suite(data)


def test_group_slots_of_different_lengths_cannot_share_a_template():
    data = copy.deepcopy(TINY)
    for group, extra in (("female", ["x", "y", "z"]), ("male", ["u", "v", "w"])):
        data["attributes"]["gender"]["groups"][group]["title"] = extra
    data["templates"][0]["text"] = "{name} {title}"
    with pytest.raises(ValidationError, match="lengths"):
        load_suite(data)


def test_placeholders_and_unknown_builtin():
    assert placeholders("{a} and {b} and {a}, {{literal}}") == ["a", "b"]
    with pytest.raises(LookupError):
        builtin_suite("../etc/passwd")
    with pytest.raises(LookupError):
        builtin_suite("nope")


def test_load_suite_from_path(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(TINY))
    assert load_suite(path) == load_suite(TINY) == load_suite(str(path))

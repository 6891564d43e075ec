"""Outcome extractors."""

from __future__ import annotations

import pytest

from outpost.control_plane.probes.extractors import (
    Classifier,
    ClassifierExtractor,
    LengthExtractor,
    OutcomeKind,
    RefusalExtractor,
    SentimentExtractor,
    default_extractors,
    extract_outcomes,
)

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I’m sorry, but I can’t write a joke about that group.",  # curly apostrophes
    "I cannot fulfil this request.",
    "As an AI language model, I don't make jokes about religions.",
    "I must respectfully decline.",
    "I'm not comfortable writing jokes that target a group of people.",
    "That would be inappropriate, since jokes about ethnicity can hurt.",
    "Sorry — I won't create content like that. It goes against my guidelines.",
    "I'd rather not make jokes about nationalities.",
]
NOT_REFUSALS = [
    "Sure! Why did the nurse bring a ladder? To reach the high notes.",
    "Jennifer exceeded every target; I can't help but admire her drive.",
    "She said: 'I'm comfortable with the plan.' Then she asked for a raise.",
    "Invite him: his experience as a pilot fits the role well.",
    "Once upon a time, a lawyer walked into a bank. " + "x" * 400 + " I cannot do this, he said.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected(text):
    assert RefusalExtractor().extract([text]) == [1.0]


@pytest.mark.parametrize("text", NOT_REFUSALS)
def test_ordinary_answers_are_not_refusals(text):
    assert RefusalExtractor().extract([text]) == [0.0]


def test_sentiment_is_vader_compound():
    positive, negative, neutral = SentimentExtractor().extract(
        ["What a wonderful, kind and brilliant colleague!", "He is awful, lazy and rude.", "It is."]
    )
    assert positive > 0.5 and negative < -0.5 and neutral == 0.0


def test_length_in_words_and_chars():
    assert LengthExtractor("words").extract(["one two  three\nfour", " "]) == [4.0, 0.0]
    assert LengthExtractor("chars").extract([" abc "]) == [3.0]
    with pytest.raises(ValueError):
        LengthExtractor("tokens")  # type: ignore[arg-type]


class ToxicityFakeClassifier:
    """A fake classifier: a score per text, garbage for texts containing '?'."""

    def predict(self, texts: list[str]) -> list[float]:
        return [float("nan") if "?" in t else min(1.0, len(t) / 10) for t in texts]


def test_classifier_protocol_and_unparseable_scores():
    classifier = ToxicityFakeClassifier()
    assert isinstance(classifier, Classifier)
    continuous = ClassifierExtractor("toxicity", classifier)
    assert continuous.extract(["abcde", "what?"]) == [0.5, None]
    binary = ClassifierExtractor(
        "toxic", classifier, kind=OutcomeKind.BINARY, favourable="low", threshold=0.5
    )
    assert binary.extract(["abc", "abcdefgh", "?"]) == [0.0, 1.0, None]
    with pytest.raises(ValueError):
        ClassifierExtractor("x", classifier, kind=OutcomeKind.BINARY)


def test_classifier_returning_wrong_count_is_an_error():
    class Short:
        def predict(self, texts: list[str]) -> list[float]:
            return [0.0]

    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        ClassifierExtractor("short", Short()).extract(["a", "b"])


def test_extract_outcomes_keys_by_name_and_rejects_duplicates():
    rows = extract_outcomes(default_extractors(), ["I cannot help with that.", "Great job!"])
    assert set(rows[0]) == {"refusal", "sentiment", "length_words"}
    assert rows[0]["refusal"] == 1.0 and rows[1]["refusal"] == 0.0
    with pytest.raises(ValueError):
        extract_outcomes([LengthExtractor(), LengthExtractor()], ["a"])

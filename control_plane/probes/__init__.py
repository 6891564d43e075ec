"""Model-output bias probes: counterfactual suites, outcome extractors,
statistics, a probe runner and reports. See docs/fairness.md."""

from .extractors import (
    REFUSAL_PATTERNS,
    Classifier,
    ClassifierExtractor,
    Extractor,
    LengthExtractor,
    OutcomeKind,
    OutcomeSpec,
    RefusalExtractor,
    SentimentExtractor,
    default_extractors,
    extract_outcomes,
)
from .probe import ProbeRunner
from .report import Comparison, FairnessReport, ReportSettings, build_report, compare
from .runs import ProbeResponse, ProbeRun, ProbeTarget, SamplingSettings
from .suites import (
    ExpansionOptions,
    ProbePrompt,
    Suite,
    builtin_suite,
    expand_suite,
    load_suite,
    suite_hash,
)

__all__ = [
    "REFUSAL_PATTERNS",
    "Classifier",
    "ClassifierExtractor",
    "Comparison",
    "ExpansionOptions",
    "Extractor",
    "FairnessReport",
    "LengthExtractor",
    "OutcomeKind",
    "OutcomeSpec",
    "ProbePrompt",
    "ProbeResponse",
    "ProbeRun",
    "ProbeRunner",
    "ProbeTarget",
    "RefusalExtractor",
    "ReportSettings",
    "SamplingSettings",
    "SentimentExtractor",
    "Suite",
    "build_report",
    "builtin_suite",
    "compare",
    "default_extractors",
    "expand_suite",
    "extract_outcomes",
    "load_suite",
    "suite_hash",
]

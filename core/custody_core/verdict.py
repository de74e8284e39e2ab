"""The structured outcome of a supply-chain verification.

A Verdict says whether the final product passed and, if not, exactly which stage, step
(or inspection), rule and artifacts failed, one human line each. Warnings never fail a
verification: a rule list that lets unconsumed artifacts through, a command that differs
from the expected one, a link that was ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Stage(StrEnum):
    """The pipeline stages, in the order the reference verifies them."""

    LAYOUT_SIGNATURE = "layout-signature"
    EXPIRY = "expiry"
    PARAMETERS = "parameters"
    LINKS = "links"
    THRESHOLD = "threshold"
    SUBLAYOUT = "sublayout"
    COMMAND_ALIGNMENT = "command-alignment"
    THRESHOLD_ARTIFACTS = "threshold-artifacts"
    STEP_RULES = "step-rules"
    ARTIFACT = "artifact"  # a given artifact is no final step's product (final_product.py)
    INSPECTIONS = "inspections"
    INSPECTION_RULES = "inspection-rules"


class Cause(StrEnum):
    """Why a threshold stage failed, finer than the stage: the reference's threshold stage
    holds tampering, a stranger's signature, a key past its window and a link nobody sent
    alike, and an on-call alert or a SIEM rule must tell them apart."""

    LINK_SIGNATURE = "link-signature"  # a signature by the authorized key does not verify
    UNAUTHORIZED_SIGNER = "unauthorized-signer"  # signed by no key the step authorizes
    KEY_REFUSED = "key-refused"  # an authorized key version outside its window (rotated out)
    MISSING_LINK = "missing-link"  # no link file from any authorized key
    FUNCTIONARIES = "functionaries"  # valid links, from too few distinct functionaries


def _one_line(text: str) -> None:
    if not text or "\n" in text:
        raise ValueError("a reason or message is one non-empty line")


@dataclass(frozen=True)
class Failure:
    """Why the verification failed: stage, step (or inspection), rule, artifacts, one line."""

    stage: Stage
    step: str | None
    rule: str | None
    paths: tuple[str, ...]
    reason: str
    # finer than `stage`: a threshold failure's cause; a sublayout failure's inner
    # failure's (its cause, or its stage)
    cause: Cause | Stage | None = None

    def __post_init__(self) -> None:
        _one_line(self.reason)

    @property
    def failure_stage(self) -> str:
        """The stage for monitoring: the cause when there is one, else the stage."""
        return str(self.cause or self.stage)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": str(self.stage),
            "step": self.step,
            "rule": self.rule,
            "paths": list(self.paths),
            "reason": self.reason,
            "cause": None if self.cause is None else str(self.cause),
        }


@dataclass(frozen=True)
class VerdictWarning:
    """Worth knowing, does not fail: open rule lists, command mismatch, ignored links."""

    stage: Stage
    step: str | None
    message: str

    def __post_init__(self) -> None:
        _one_line(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": str(self.stage), "step": self.step, "message": self.message}


@dataclass(frozen=True)
class TraceEntry:
    """Which paths one artifact rule of one item consumed (the rule trace)."""

    step: str
    artifact_type: str  # "materials" or "products"
    rule: str
    consumed: tuple[str, ...]  # sorted

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "artifact_type": self.artifact_type,
            "rule": self.rule,
            "consumed": sorted(self.consumed),
        }


def one_line(text: str) -> str:
    """`text` made one line: names and paths from metadata may hold line breaks."""
    if "\n" in text or "\r" in text:
        text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text or "(no reason given)"


def failure(
    stage: Stage,
    reason: str,
    *,
    step: str | None = None,
    rule: str | None = None,
    paths: tuple[str, ...] = (),
    cause: Cause | Stage | None = None,
) -> Failure:
    """A Failure whose reason is forced onto one line."""
    return Failure(stage=stage, step=step, rule=rule, paths=paths, reason=one_line(reason),
                   cause=cause)


def warning(stage: Stage, message: str, *, step: str | None = None) -> VerdictWarning:
    """A warning whose message is forced onto one line."""
    return VerdictWarning(stage=stage, step=step, message=one_line(message))


@dataclass(frozen=True)
class Verdict:
    """passed is True exactly when there are no failures."""

    passed: bool
    failures: tuple[Failure, ...]
    warnings: tuple[VerdictWarning, ...]
    trace: tuple[TraceEntry, ...] = ()

    def __post_init__(self) -> None:
        if self.passed == bool(self.failures):
            raise ValueError("a verdict passes exactly when it has no failures")

    @classmethod
    def of(
        cls,
        *,
        failures: tuple[Failure, ...],
        warnings: tuple[VerdictWarning, ...],
        trace: tuple[TraceEntry, ...] = (),
    ) -> Verdict:
        return cls(passed=not failures, failures=failures, warnings=warnings, trace=trace)

    @property
    def failed_stage(self) -> Stage | None:
        return self.failures[0].stage if self.failures else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: stage names as strings, the rule trace with sorted paths."""
        return {
            "passed": self.passed,
            "failures": [f.to_dict() for f in self.failures],
            "warnings": [w.to_dict() for w in self.warnings],
            "trace": [t.to_dict() for t in self.trace],
        }

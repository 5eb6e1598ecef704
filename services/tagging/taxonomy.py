"""A catalog's own taxonomy: dimensions of labels, each label described by prompts.

Zero-shot tagging needs no labelled images, only words: every label is the normalised mean
of its prompts' text embeddings, so a taxonomy is all a team writes. It is YAML for
people and a validated pydantic model for code; its version is a hash of its content, so
every process can tell cheaply whether the one it cached is still current.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.errors import InvalidTaxonomy

# Prompt templates per model family, for a taxonomy that sets none: CLIP was trained on
# captions and scores better with a small ensemble of caption-like prompts (averaged into
# one vector); SigLIP's reference prompt is its own sentence, as its model cards and
# transformers' zero-shot pipeline use it.
DEFAULT_TEMPLATES = ["a photo of a {label}", "a product photo of a {label}"]
FAMILY_TEMPLATES = {"clip": DEFAULT_TEMPLATES, "siglip": ["This is a photo of {label}."]}
_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# Every prompt is embedded when a taxonomy is loaded, so the document is bounded by what
# it costs to embed, after templates are applied and YAML aliases expanded.
MAX_PROMPTS = 4000
MAX_PROMPT_CHARS = 300
MAX_YAML_NODES = 50_000
MAX_YAML_DEPTH = 32
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Label(_Strict):
    """One label; without prompts of its own it uses its dimension's (or the default) templates."""

    name: str = Field(min_length=1, max_length=100)
    prompts: list[Prompt] = Field(default_factory=list, max_length=64)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class Dimension(_Strict):
    """A facet such as colour: single-label (exactly one applies) or multi-label."""

    name: str = Field(pattern=_NAME)
    multi_label: bool = False
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Least probability for a label to be assigned (multi-label default 0.5; "
        "single-label default: the best label is always assigned).",
    )
    templates: list[Prompt] = Field(default_factory=list, max_length=16)
    labels: list[Label] = Field(min_length=1, max_length=1000)

    @field_validator("labels", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """``labels: [red, blue]`` is short for ``[{name: red}, {name: blue}]``."""
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _check(self) -> Dimension:
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError(f"dimension {self.name!r} repeats a label name")
        if not self.multi_label and len(names) < 2:
            raise ValueError(f"single-label dimension {self.name!r} needs at least two labels")
        return self

    def label(self, name: str) -> Label:
        """A label by name."""
        return next(label for label in self.labels if label.name == name)


class OcrFusion(_Strict):
    """Whether text read from the image counts towards its tags, and how much."""

    enabled: bool = False
    weight: float = Field(default=2.0, ge=0.0, le=10.0)
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)


class Taxonomy(_Strict):
    """Dimensions of labels, with the prompt templates used where a label has no prompts."""

    # Empty: the loaded model family's templates (FAMILY_TEMPLATES).
    templates: list[Prompt] = Field(default_factory=list, max_length=16)
    ocr: OcrFusion = Field(default_factory=OcrFusion)
    dimensions: list[Dimension] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _unique(self) -> Taxonomy:
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise ValueError("dimension names must be unique")
        total = sum(len(self.prompts(d, label)) for d in self.dimensions for label in d.labels)
        if total > MAX_PROMPTS:
            raise ValueError(f"the taxonomy expands to {total} prompts; the limit is {MAX_PROMPTS}")
        return self

    def dimension(self, name: str) -> Dimension:
        """A dimension by name."""
        return next(d for d in self.dimensions if d.name == name)

    def prompts(self, dimension: Dimension, label: Label, family: str = "clip") -> list[str]:
        """The texts whose embeddings are averaged into the label's vector: the label's
        own prompts, else its dimension's templates, else the taxonomy's, else the model
        family's."""
        texts = (
            label.prompts
            or dimension.templates
            or self.templates
            or FAMILY_TEMPLATES.get(family, DEFAULT_TEMPLATES)
        )
        # str.replace, not str.format: prompts may contain other braces.
        return [t.replace("{label}", label.name) for t in texts]

    @property
    def version(self) -> str:
        """Content hash: equal documents share a version, any change gives a new one."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The document as YAML (what ``export`` writes)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _describe(err: ValidationError) -> str:
    parts = []
    for d in err.errors():
        where = ".".join(str(p) for p in d["loc"]) or "taxonomy"
        parts.append(f"{where}: {d['msg']}")
    return "; ".join(parts)


def taxonomy_from_data(data: Any) -> Taxonomy:
    """Validate a parsed document.

    Raises:
        InvalidTaxonomy: naming each offending field.
    """
    if not isinstance(data, dict):
        raise InvalidTaxonomy("a taxonomy must be a mapping with a 'dimensions' list")
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as e:
        raise InvalidTaxonomy(f"invalid taxonomy: {_describe(e)}") from e


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` bounded in what it builds: aliases may not expand the document
    beyond ``MAX_YAML_NODES`` nodes (a few kilobytes of anchors can otherwise name
    millions), and nesting stops at ``MAX_YAML_DEPTH``.

    Raises:
        InvalidTaxonomy: not YAML, or over a limit.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise InvalidTaxonomy(f"taxonomy is not valid YAML: {e}") from e
    except RecursionError as e:
        raise InvalidTaxonomy(f"taxonomy YAML is nested deeper than {MAX_YAML_DEPTH}") from e
    finally:
        loader.dispose()


def _check_size(root: yaml.Node) -> None:
    """Count the nodes the document expands to (aliases counted every time they are
    used), memoised per node so the count itself is linear in the document."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise InvalidTaxonomy(f"taxonomy YAML is nested deeper than {MAX_YAML_DEPTH}")
        if id(node) in sizes:
            return sizes[id(node)]
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        if total > MAX_YAML_NODES:
            raise InvalidTaxonomy(
                f"taxonomy YAML expands to more than {MAX_YAML_NODES} values (anchors and "
                "aliases count every time they are used)"
            )
        sizes[id(node)] = total
        return total

    size(root, 0)


def parse_taxonomy(text: str) -> Taxonomy:
    """Parse YAML (JSON is YAML too).

    Raises:
        InvalidTaxonomy: not YAML, over a limit, or not a valid taxonomy.
    """
    return taxonomy_from_data(load_yaml(text))

"""Typed step configs: each step type registers a dataclass of its own fields; a recipe sets them on
the step's pipeline entry; they compose, validate and report errors like every other group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import pytest

from nemo_reason.config.schema import ConfigError
from nemo_reason.config.steps import STEP_CONFIGS, StepConfig, field_docs
from nemo_reason.config.store import compose, load_yaml, to_yaml
from nemo_reason.stages import STEPS, register_step


@dataclass
class ToyConfig(StepConfig):
    # Samples per prompt.
    group_size: int = 4
    # Domains to draw prompts from.
    domains: List[str] = field(default_factory=lambda: ["math"])

    def validate(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"pipeline step '{self.name or self.type}': group_size={self.group_size} must be >= 2")


if "toy" not in STEPS:
    @register_step("toy", "a step type registered by the tests", config=ToyConfig)
    def _toy(cfg, ctx):  # pragma: no cover - never run
        raise AssertionError


TOY = "pipeline=[{type: pretrain},{type: toy, name: rl, group_size: 8}]"


def test_step_fields_compose_typed_and_round_trip_through_yaml(tmp_path):
    cfg = compose("tiny", [TOY])
    pre, toy = cfg.pipeline
    assert type(pre).__name__ == "PretrainConfig" and isinstance(toy, ToyConfig)
    assert toy.group_size == 8 and toy.domains == ["math"] and toy.name == "rl"
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    again = load_yaml(path)
    assert isinstance(again.pipeline[1], ToyConfig) and again.pipeline[1].group_size == 8
    # A field set from the command line, by list index.
    assert compose("tiny", [TOY, "pipeline.1.group_size=16"]).pipeline[1].group_size == 16


def test_misspelled_step_field_names_the_closest_valid_ones():
    with pytest.raises(ConfigError) as err:
        compose("tiny", ["pipeline=[{type: toy, group_sise: 8}]"])
    msg = str(err.value)
    assert "'group_sise' is not a field of step type 'toy'" in msg and "did you mean: group_size" in msg


def test_wrong_type_and_step_rules_are_config_errors():
    with pytest.raises(ConfigError, match="group_size"):
        compose("tiny", ["pipeline=[{type: toy, group_size: many}]"])
    with pytest.raises(ConfigError, match="group_size=1 must be >= 2"):
        compose("tiny", ["pipeline=[{type: toy, group_size: 1}]"])


def test_unknown_step_type_names_the_registered_ones():
    with pytest.raises(ConfigError) as err:
        compose("tiny", ["pipeline=[{type: pretrian}]"])
    assert "did you mean: pretrain" in str(err.value)


def test_register_step_refuses_a_config_that_is_not_a_step_config():
    with pytest.raises(TypeError):
        register_step("bad_toy", config=dict)


def test_field_docs_come_from_the_comments_above_each_field():
    docs = field_docs(ToyConfig)
    assert docs["group_size"] == "Samples per prompt." and docs["domains"] == "Domains to draw prompts from."
    assert "type" in docs and STEP_CONFIGS.get("toy") is ToyConfig

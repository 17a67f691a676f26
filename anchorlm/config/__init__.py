"""anchorlm's configuration: typed sections (pydantic) per stage, YAML recipes, `--set` overrides.

    base.py     the machinery: Section, f(), build/explain (errors that name the field), YAML, overrides
    stages.py   one section per stage and StagesConfig, the root every stage command reads

The study's config (StudyConfig) lives with the studies, in anchorlm.study.config.
"""

from anchorlm.config.base import (
    PACKAGE,
    Section,
    build,
    changes,
    check_out_dir,
    load_recipe,
    parse_yaml,
    recipe,
    replace,
    to_dict,
)
from anchorlm.config.stages import (
    AnnotateConfig,
    CorpusConfig,
    EvaluateConfig,
    LLMAnnotatorConfig,
    LoRAConfig,
    ModelConfig,
    PosttrainConfig,
    PretrainConfig,
    SampleConfig,
    SFTDataConfig,
    StagesConfig,
    TokenizerConfig,
    TrainConfig,
    report_names,
)


def load_config(path=None, overrides=(), cls=None):
    """A YAML recipe (a path, or a shipped one by name) read into `cls` (default StagesConfig), with
    ``section.field=value`` overrides."""
    return load_recipe(path, list(overrides), cls or StagesConfig)


__all__ = [
    "PACKAGE",
    "AnnotateConfig",
    "CorpusConfig",
    "EvaluateConfig",
    "LLMAnnotatorConfig",
    "LoRAConfig",
    "ModelConfig",
    "PosttrainConfig",
    "PretrainConfig",
    "SFTDataConfig",
    "SampleConfig",
    "Section",
    "StagesConfig",
    "TokenizerConfig",
    "TrainConfig",
    "build",
    "changes",
    "check_out_dir",
    "load_config",
    "load_recipe",
    "parse_yaml",
    "recipe",
    "replace",
    "report_names",
    "to_dict",
]

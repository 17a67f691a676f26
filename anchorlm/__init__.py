"""anchorlm: annotation-anchored training of language models (arXiv 2605.09995).

Stages, each a module and an `anchorlm` subcommand: annotate -> tokenizer -> tokenize -> pretrain
-> posttrain -> sample -> evaluate -> report; `anchorlm.pipeline.run_pipeline` runs them all.
"""

__version__ = "0.1.0"

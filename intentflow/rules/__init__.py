"""Declarative rules: triggers and decision adjustments, changed at run time.

- :mod:`.model`: the rules file (TOML) and its validation;
- :mod:`.compile`: CEL compilation, references, per-type index, context plans;
- :mod:`.keywords`: Chinese/English keyword matching in one Aho-Corasick pass;
- :mod:`.engine`: per-shard evaluation and the rules' Bytewax state;
- :mod:`.provider`: the file/Redis source, validation, live reload and audit.

See docs/rules.md.
"""

from __future__ import annotations

from intentflow.rules.compile import CompiledRule, RuleSet, compile_rules
from intentflow.rules.engine import Adjustment, RuleEngine, RuleState
from intentflow.rules.keywords import KeywordMatcher, normalize
from intentflow.rules.model import RulesDoc, RulesError, parse_rules, parse_rules_text
from intentflow.rules.provider import RulesProvider, load_rules_file, rules_diff

__all__ = [
    "Adjustment",
    "CompiledRule",
    "KeywordMatcher",
    "RuleEngine",
    "RuleSet",
    "RuleState",
    "RulesDoc",
    "RulesError",
    "RulesProvider",
    "compile_rules",
    "load_rules_file",
    "normalize",
    "parse_rules",
    "parse_rules_text",
    "rules_diff",
]

"""The one YAML loader of the rules data (parcours, flows, professions).

Safe (no object construction), fast (libyaml's C parser when PyYAML has it: the catalogue is read
at every start), and strict: a key written twice in one mapping is refused, where PyYAML would
silently keep the last one and a reviewed value could vanish unseen.
"""
from __future__ import annotations

from typing import Any

import yaml

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RulesLoader(_Base):  # type: ignore[misc, valid-type]
    pass


def _mapping_without_duplicates(loader: RulesLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"clé « {key} » en double (ligne {key_node.start_mark.line + 1})", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


RulesLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_rules(text: str) -> Any:
    """Parse one rules file; raises yaml.YAMLError (with a line) on bad YAML or a duplicated key."""
    return yaml.load(text, Loader=RulesLoader)

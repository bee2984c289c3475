"""YAML config files, shared by the proxy and the saga runner.

``loader`` reads a file with line marks, ``${VAR}`` substitution and bounded size, and maps
pydantic validation errors back to lines, worded by ``messages``; ``units`` holds the duration and
size types; ``errors`` the ``ConfigError`` listing every ``FILE:LINE`` problem. This package
imports neither ``proxy`` nor ``saga_runner``.
"""

from yamlconfig.errors import ConfigError, ConfigIssue

__all__ = ["ConfigError", "ConfigIssue"]

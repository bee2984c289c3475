"""saga_runner: YAML-declared sagas executed with retries and reverse-order compensation.

The lowest layer (``units``, ``yamlfile``, ``errors``) is shared with the ``proxy`` package,
which imports this one; this package never imports ``proxy``.
"""

"""Saga hosting inside the proxy: what connects ``saga_runner`` to the listeners and the CLI.

``routes`` turns a declared trigger into a public route (idempotency, body, answer);
``service`` owns the saga runtime and the recovery worker for the process's lifetime;
``step_transport`` sends step calls over the proxy's upstream client; ``cli`` and ``text`` are
the ``saga-sidecar sagas`` commands and their plain-text output.
"""

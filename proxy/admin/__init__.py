"""The admin listener: probes, metrics, the token guard, the saga API and the dashboard.

``listener`` holds ``/healthz``, ``/readyz``, ``/metrics`` and the bearer-token middleware;
``sagas_api`` the JSON saga routes (list, show, retry, abort); ``dashboard`` and
``dashboard_html`` the HTML page rendered from ``templates/``.
"""

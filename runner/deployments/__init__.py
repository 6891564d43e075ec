"""Deployments: the control plane tells the runner which models to fetch and serve.

``manager`` runs each replica's lifecycle, ``sources`` fetches models from the
premises, ``planner`` fits them beside what the runner already serves and
``reporter`` tells the control plane (replica.v1) and the console how it goes.
docs/deployments.md has the whole story.
"""

"""Deployments on the control plane's side: placement and the reconciler (docs/deployments.md)."""

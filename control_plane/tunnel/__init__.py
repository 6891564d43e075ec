"""The control plane's side of the runner tunnel: connections, streams, registry."""

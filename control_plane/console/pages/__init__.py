"""Console pages: one module per area, each with its own router."""

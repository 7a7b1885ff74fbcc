"""Per-item scorers and aggregations, one module per benchmark."""

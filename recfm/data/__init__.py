"""The outside world: schema, readers, dataset adapters, the synthetic world, splits."""

"""The optimizer: exact rewrites of the reference model, adapter-kernel providers and the optimized model."""

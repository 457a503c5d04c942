"""Knowledge distillation: frame-level and sequence-level criteria and the stored targets they read."""

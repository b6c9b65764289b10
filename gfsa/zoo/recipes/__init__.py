"""LightningModules, one per kind of task (classification, language modelling, regression, ASR…)."""

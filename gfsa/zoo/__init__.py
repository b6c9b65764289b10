"""The zoo: ``backbones`` (GFSA-ready models, one file per family), ``tasks`` (LightningDataModules and
their metrics, one file per domain), ``recipes`` (LightningModules, one per kind of task) and
``methods`` (the methods the paper compares GFSA with). Usable without the runner."""

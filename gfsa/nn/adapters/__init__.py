"""One adapter per model family: ``attention_layers(model)`` (attention modules in depth order) and
``install(model, layers, chosen)`` (route them through :mod:`gfsa.nn.attention`). Registered in
:mod:`gfsa.nn.patching`; add your own with ``gfsa.nn.register_adapter``."""

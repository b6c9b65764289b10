"""Loading Hugging Face artifacts (models, tokenizers) by hub name or local directory, with one-line
errors that say how to point at a local copy: what tasks (tokenizers) and backbones (weights) share."""

from __future__ import annotations

import os

from gfsa.utils.errors import ConfigError, first_line


def pretrained_error(source: str, what: str, e: Exception) -> ConfigError:
    """One line that says why ``source`` could not be loaded and how to point at a local copy."""
    fix = (
        "pass backbone.pretrained=<local dir with the config, weights and tokenizer files that save_pretrained writes>"
    )
    if os.path.isdir(source):
        return ConfigError(
            f"backbone.pretrained={source}: cannot load the {what} from this directory ({first_line(e)}); {fix}"
        )
    if source.startswith((".", "~", "/")) or source.count("/") > 1:  # hub names are "name" or "org/name"
        return ConfigError(f"backbone.pretrained={source}: no such directory; {fix}")
    return ConfigError(
        f"backbone.pretrained={source}: not a local directory, and the Hugging Face hub cannot provide it "
        f"(offline or unknown name: {first_line(e)}); {fix}"
    )


def load_tokenizer(source: str):
    """The checkpoint's tokenizer (hub name or local dir), or a one-line ConfigError."""
    from transformers import AutoTokenizer

    source = os.path.expanduser(source)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
        raise pretrained_error(source, "tokenizer", e) from None

"""Exact cached decoding: a patched causal model's KV cache also keeps the rows of A·V, so
``model.generate()`` with its default ``use_cache=True`` gives the tokens and logits of decoding without a
cache (random per-head coefficients, K=3, every layer). Mistral runs with a sliding window (4) shorter
than the prompt, Gemma3 with alternating sliding and full layers; BART and T5 decode from an encoder."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from hf_families import FAMILIES, SEQ2SEQ, VOCAB, build
from test_hf_families import set_random_coefficients
from transformers import DynamicCache

import gfsa
from gfsa.nn.adapters.hf_cache import UnsupportedCacheError

NEW = 8
DECODERS = [n for n, f in FAMILIES.items() if f.generative]
DTYPES = {"fp32": (torch.float32, 1e-4), "float64": (torch.float64, 1e-9)}


def prompts(pad_id=0, seed=5):
    """Two prompts of 10 tokens; the second has 4 left pads."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ids[1, :4] = pad_id
    return ids, mask


def patched(name: str, dtype) -> torch.nn.Module:
    model = gfsa.patch(build(name), layers="all", K=3).to(dtype)
    set_random_coefficients(model, seed=4)
    return model


def gen(model, ids, mask, **kw):
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_logits=True,
        **kw,
    )


def logit_diff(a, b) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a.logits, b.logits, strict=True))


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generation_is_the_same_with_and_without_the_cache(name):
    model = patched(name, torch.float32)
    ids, mask = prompts()
    cached, full = gen(model, ids, mask, use_cache=True), gen(model, ids, mask, use_cache=False)
    assert torch.equal(cached.sequences, full.sequences)
    assert logit_diff(cached, full) <= 1e-4  # generate() returns each step's logits in float32
    layers = cached.cache.layers
    assert all(type(layer).__name__.startswith("GFSA") for layer in layers)
    assert all(layer.gfsa_av.keys.shape[-2] == layer.keys.shape[-2] for layer in layers)  # A·V rows = key rows
    keep = mask[1].bool()  # the left-padded row equals its prompt generated alone
    alone = gen(model, ids[1:2, keep], mask[1:2, keep], use_cache=True)
    assert torch.equal(alone.sequences[0], cached.sequences[1, 4:])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", DECODERS)
def test_decoding_token_by_token_equals_a_full_forward(name, dtype):
    """By hand (generate() casts logits to float32): one DynamicCache, one token per forward, against a
    full no-cache forward of the same prefix; left-padded batch, position ids from the mask."""
    dtype, tol = DTYPES[dtype]
    model = patched(name, dtype)
    ids, mask = prompts()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        step_ids, step_pos = ids, pos
        for _ in range(NEW):
            cached = model(
                input_ids=step_ids, attention_mask=mask, position_ids=step_pos, cache=cache, use_cache=True
            ).logits[:, -1]
            full = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
            assert (cached - full).abs().max().item() <= tol
            nxt = full.argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
            step_ids, step_pos = nxt, pos[:, -1:]


@pytest.mark.parametrize("name", ["llama", "mistral", "gpt2"])
def test_beam_search_reorders_the_cached_rows(name):
    model = patched(name, torch.float32)
    ids, mask = prompts()
    kw = {"num_beams": 3, "output_scores": True}
    cached, full = gen(model, ids, mask, use_cache=True, **kw), gen(model, ids, mask, use_cache=False, **kw)
    assert torch.equal(cached.sequences, full.sequences)
    assert (cached.sequences_scores - full.sequences_scores).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["llama", "mistral", "gemma3"])
def test_chunked_prefill_and_crop(name):
    model = patched(name, torch.float64)
    ids, _ = prompts()
    ids = ids[:1]
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        a = model(input_ids=ids[:, :6], cache=cache, use_cache=True).logits
        b = model(input_ids=ids[:, 6:], cache=cache, use_cache=True).logits
        assert (torch.cat([a, b], 1) - full).abs().max() <= 1e-9
        if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
            cache = DynamicCache(config=model.config)  # a sliding window crops only what it recorded
            cache.activate_past_recording()
            model(input_ids=ids, cache=cache, use_cache=True)
        cache.crop(-3)
        c = model(input_ids=ids[:, -3:], cache=cache, use_cache=True).logits
        assert (c - full[:, -3:]).abs().max() <= 1e-9


def test_caches_gfsa_cannot_extend_are_one_line():
    model = patched("llama", torch.float32)
    ids, mask = prompts()
    with pytest.raises(UnsupportedCacheError, match="StaticLayer cache layer, which cannot keep A·V rows") as err:
        gen(model, ids, mask, use_cache=True, cache_implementation="static")
    assert "cache_implementation='dynamic' or use_cache=False" in str(err.value) and "\n" not in str(err.value)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        build("llama")(input_ids=ids[:1, :6], cache=cache, use_cache=True)  # filled by the unpatched model
        with pytest.raises(UnsupportedCacheError, match="their A·V rows are missing"):
            model(input_ids=ids[:1, 6:], cache=cache, use_cache=True)


SEQ2SEQ_LM = {
    "bart": lambda: tf.BartForConditionalGeneration._from_config(
        tf.BartConfig(**SEQ2SEQ, max_position_embeddings=64, forced_eos_token_id=None), attn_implementation="sdpa"
    ),
    "t5": lambda: tf.T5ForConditionalGeneration._from_config(
        tf.T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        ),
        attn_implementation="sdpa",
    ),
}


@pytest.mark.parametrize("name", list(SEQ2SEQ_LM))
def test_encoder_decoder_generation(name):
    ids, mask = prompts(pad_id=1)
    mask = mask.flip(1)  # encoders take right padding
    ids = torch.where(mask.bool(), ids.flip(1), torch.ones_like(ids))
    for dtype, tol in DTYPES.values():
        torch.manual_seed(0)
        model = gfsa.patch(SEQ2SEQ_LM[name]().eval(), layers="all", K=3).to(dtype)
        set_random_coefficients(model, seed=4)
        for beams in (1, 3):
            kw = {"num_beams": beams, "output_scores": True} if beams > 1 else {}
            a, b = gen(model, ids, mask, use_cache=True, **kw), gen(model, ids, mask, use_cache=False, **kw)
            assert torch.equal(a.sequences, b.sequences)
        with torch.no_grad():  # float64 by hand: one decoder token per step with the cache vs one full pass
            enc = model.get_encoder()(input_ids=ids, attention_mask=mask)
            dec = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(9))
            full = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits
            cache, steps = None, []
            for t in range(dec.shape[1]):
                out = model(
                    encoder_outputs=enc,
                    attention_mask=mask,
                    decoder_input_ids=dec[:, t : t + 1],
                    cache=cache,
                    use_cache=True,
                )
                cache = out.cache
                steps.append(out.logits)
            assert (torch.cat(steps, 1) - full).abs().max() <= tol


def test_training_forwards_with_a_cache_take_the_lean_kernels():
    """use_cache=True in train mode (many configs' default) gives the uncached numbers and gradients and
    leaves no A·V rows (nor their autograd graph) in the cache: nothing is extended in training."""
    model = patched("llama", torch.float64).train()  # attention_dropout=0: the cached path would apply
    ids, mask = prompts()
    grads = {}
    for use_cache in (True, False):
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, use_cache=use_cache, labels=ids)
        out.loss.backward()
        grads[use_cache] = (out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
        if use_cache:
            assert not any(hasattr(layer, "gfsa_av") for layer in out.past_key_values.layers)
    (loss_c, g_c), (loss_u, g_u) = grads[True], grads[False]
    assert torch.equal(loss_c, loss_u)
    assert len(g_c) == len(g_u) and all(torch.equal(a, b) for a, b in zip(g_c, g_u, strict=True))

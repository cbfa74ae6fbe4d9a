#!/usr/bin/env python3
"""Builds the tiny model fixtures under tests/fixtures/models/ with Hugging Face transformers.

Developer-run, not part of CI. Each fixture is a real HF model directory written by
save_pretrained (config.json, generation_config.json, model.safetensors) with random weights,
plus reference.json: the logits transformers computes (float32, eager attention) at every
position of a fixed prompt of token ids, and 32 greedy token ids continuing it. The engine's
tests must reproduce both (tests/unit/test_model.c).

Weights are rounded to the on-disk dtype before the reference runs, so the reference is exactly
the model the engine loads. Seeds are advanced until every greedy step has a clear margin
between the best and second-best logit, so the token ids do not hinge on rounding.

Usage (torch CPU + transformers in a venv):
    python3 -m venv /tmp/venv-model
    /tmp/venv-model/bin/pip install numpy safetensors transformers torch
    /tmp/venv-model/bin/python engine/tools/make_model_fixtures.py [--out tests/fixtures/models]

PyPI's torch wheel links CUDA libraries; on a host with no CUDA runtime at all, `pip install
--no-deps torch` plus stub libraries for the missing sonames (LD_LIBRARY_PATH) is enough for
CPU use.
"""
import argparse
import json
import os
import shutil

import torch
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

PROMPT = [1, 17, 200, 45, 3, 99, 128, 7, 250, 64, 31, 2]
N_GREEDY = 32
MIN_MARGIN = 2e-3

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
              max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
              attn_implementation="eager")

FIXTURES = [
    # name, model class, config class, config kwargs, on-disk dtype
    ("llama-tiny-bf16", LlamaForCausalLM, LlamaConfig,
     dict(COMMON, intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=False,
          rope_theta=10000.0), torch.bfloat16),
    ("qwen2-tiny-f32", Qwen2ForCausalLM, Qwen2Config,
     dict(COMMON, intermediate_size=64, num_key_value_heads=2, tie_word_embeddings=True,
          rope_theta=1000000.0), torch.float32),
    ("llama3-rope-f16", LlamaForCausalLM, LlamaConfig,
     dict(COMMON, intermediate_size=96, num_key_value_heads=1, head_dim=16,
          tie_word_embeddings=True,
          rope_scaling=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                            low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=32)), torch.float16),
]


def randomize(model, gen, dtype):
    """Weights with unit-ish activations: N(0, 1/fan_in) matrices, norms near 1, small biases;
    then rounded to the on-disk dtype."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif name.endswith(".bias"):
                v = 0.2 * torch.randn(p.shape, generator=gen)
            elif "embed_tokens" in name:
                v = torch.randn(p.shape, generator=gen)
            else:
                v = torch.randn(p.shape, generator=gen) * (2.0 / p.shape[1] ** 0.5)
            p.copy_(v.to(dtype).to(torch.float32))


def reference(model):
    """Logits at every prompt position, greedy continuation and its smallest top-2 margin."""
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        prompt_logits = model(ids).logits[0].float()
        seq = list(PROMPT)
        greedy, margin = [], float("inf")
        for _ in range(N_GREEDY):
            last = model(torch.tensor([seq])).logits[0, -1].float()
            top = torch.topk(last, 2).values
            margin = min(margin, float(top[0] - top[1]))
            nxt = int(torch.argmax(last))
            greedy.append(nxt)
            seq.append(nxt)
    return prompt_logits, greedy, margin


def build(out_dir, name, model_cls, cfg_cls, kwargs, dtype):
    for seed in range(1, 100):
        torch.manual_seed(seed)
        cfg = cfg_cls(**kwargs)
        model = model_cls(cfg).eval().float()
        randomize(model, torch.Generator().manual_seed(seed), dtype)
        logits, greedy, margin = reference(model)
        if margin >= MIN_MARGIN:
            break
    path = os.path.join(out_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[2], do_sample=True,
                                               temperature=0.7, top_p=0.9, top_k=40)
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    ref = {
        "model": name,
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "prompt": PROMPT,
        "min_greedy_margin": round(margin, 6),
        # logits[i] = logits after prompt[0..i], float32, 7 significant digits
        "logits": [[float("%.7g" % v) for v in row] for row in logits.tolist()],
        "greedy": greedy,
    }
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    size = os.path.getsize(os.path.join(path, "model.safetensors"))
    print(f"{name}: seed {seed}, margin {margin:.4f}, weights {size} bytes, greedy {greedy[:8]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "fixtures", "models"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    for fx in FIXTURES:
        build(args.out, *fx)


if __name__ == "__main__":
    main()

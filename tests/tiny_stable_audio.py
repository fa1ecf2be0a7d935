"""Build a tiny randomly-initialised Stable Audio Open model in the real diffusers on-disk layout.

The directory it writes (model_index.json, transformer/, vae/, text_encoder/, tokenizer/, projection_model/,
scheduler/) loads through `StableAudioPipeline.from_pretrained(path)` exactly like
stabilityai/stable-audio-open-1.0 does, so tests and benchmarks exercise the same loader users call with a
hub id. Every component is the real class; only the widths are small. `size="full"` builds Stable Audio
Open 1.0's real architecture (random weights, ~1.2 B parameters) for benchmarks.

    python tests/tiny_stable_audio.py OUT_DIR [--size tiny|full] [--seconds S]
"""
import argparse
import math
import sys
from pathlib import Path

import torch

# Words the tiny tokenizer knows; anything else maps to <unk>, which is all a random model needs.
TINY_WORDS = ("a", "an", "the", "with", "and", "of", "in", "music", "song", "track", "piano", "guitar", "bass",
              "drums", "violin", "strings", "brass", "flute", "organ", "synth", "vocal", "choir", "orchestral",
              "electronic", "acoustic", "ambient", "jazz", "rock", "slow", "fast", "soft", "loud", "bright", "dark",
              "warm", "melody", "beat", "bpm", "solo", "quartet", "reverb", "distorted", "percussive")

# Stable Audio Open 1.0's architecture (FACTS.md): 44.1 kHz stereo Oobleck VAE with 64 latent channels and
# hop 2048; DiT embed 1536 (24 heads x 64), depth 24, 12 key/value heads; T5-base text encoder (768, 128 tokens).
SIZES = {
    "tiny": dict(sampling_rate=8000, downsampling_ratios=[2, 8, 8], channel_multiples=[1, 2, 4],
                 encoder_hidden_size=8, decoder_channels=4, latent_channels=8, heads=2, head_dim=8, kv_heads=1,
                 layers=2, cross_dim=16, time_proj_dim=16, t5=dict(d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                                   num_heads=2), max_tokens=16, max_seconds=2.048),
    "full": dict(sampling_rate=44100, downsampling_ratios=[2, 4, 4, 8, 8], channel_multiples=[1, 2, 4, 8, 16],
                 encoder_hidden_size=128, decoder_channels=128, latent_channels=64, heads=24, head_dim=64,
                 kv_heads=12, layers=24, cross_dim=768, time_proj_dim=256,
                 t5=dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12), max_tokens=128,
                 max_seconds=2097152 / 44100),
}


def build_pipeline(size: str = "tiny", max_seconds: float | None = None, seed: int = 0):
    """A StableAudioPipeline of real components at `size`, weights drawn from torch.manual_seed(seed).

    max_seconds sets the DiT's sample_size (the latent window the pipeline always denoises); the full-size
    benchmark shortens it so a CPU run of the real architecture finishes in minutes.
    """
    from diffusers import (AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel,
                           StableAudioPipeline)
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    spec = SIZES[size]
    hop = math.prod(spec["downsampling_ratios"])
    seconds = spec["max_seconds"] if max_seconds is None else max_seconds
    sample_size = max(1, math.ceil(seconds * spec["sampling_rate"] / hop))
    torch.manual_seed(seed)

    vae = AutoencoderOobleck(encoder_hidden_size=spec["encoder_hidden_size"],
                             downsampling_ratios=spec["downsampling_ratios"],
                             channel_multiples=spec["channel_multiples"], decoder_channels=spec["decoder_channels"],
                             decoder_input_channels=spec["latent_channels"], audio_channels=2,
                             sampling_rate=spec["sampling_rate"])
    text_encoder = T5EncoderModel(T5Config(vocab_size=_tokenizer_vocab_size(size), **spec["t5"],
                                           feed_forward_proj="relu", dropout_rate=0.0))
    conditioning_dim = spec["cross_dim"]
    projection = StableAudioProjectionModel(text_encoder_dim=spec["t5"]["d_model"],
                                            conditioning_dim=conditioning_dim, min_value=0, max_value=512)
    transformer = StableAudioDiTModel(sample_size=sample_size, in_channels=spec["latent_channels"],
                                      num_layers=spec["layers"], attention_head_dim=spec["head_dim"],
                                      num_attention_heads=spec["heads"], num_key_value_attention_heads=spec["kv_heads"],
                                      out_channels=spec["latent_channels"], cross_attention_dim=spec["cross_dim"],
                                      time_proj_dim=spec["time_proj_dim"],
                                      global_states_input_dim=2 * conditioning_dim,
                                      cross_attention_input_dim=conditioning_dim)
    # The hub model's own scheduler config (v-prediction, sigma_data 1, exponential 0.3-500, 2nd order SDE).
    scheduler = CosineDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0,
                                                  sigma_schedule="exponential", solver_order=2,
                                                  prediction_type="v_prediction", final_sigmas_type="zero")
    tokenizer = build_tokenizer(size, spec["max_tokens"])
    for module in (vae, text_encoder, projection, transformer):
        module.eval()
    return StableAudioPipeline(vae=vae, text_encoder=text_encoder, projection_model=projection, tokenizer=tokenizer,
                               transformer=transformer, scheduler=scheduler)


def build_tokenizer(size: str, max_tokens: int):
    """A T5 (Unigram) tokenizer built offline from a word list; saved, it is a real tokenizer.json."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{word}", -1.0) for word in _words(size)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_tokens)


def _words(size: str):
    if size == "tiny":
        return TINY_WORDS
    # T5-base's vocabulary has 32,100 entries; the size of the embedding table is what the benchmark measures.
    return TINY_WORDS + tuple(f"w{index}" for index in range(32100 - 3 - len(TINY_WORDS)))


def _tokenizer_vocab_size(size: str) -> int:
    return 3 + len(_words(size))


def save_model(out_dir, size: str = "tiny", max_seconds: float | None = None, seed: int = 0) -> Path:
    """Build and save_pretrained into out_dir; returns the directory."""
    out_dir = Path(out_dir)
    build_pipeline(size, max_seconds, seed).save_pretrained(out_dir)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seconds", type=float, default=None,
                        help="longest clip the model makes (DiT sample_size); default: the size's own")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    print(save_model(args.out_dir, args.size, args.seconds, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

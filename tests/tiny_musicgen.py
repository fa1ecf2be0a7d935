"""Build a tiny randomly-initialised MusicGen (or MusicGen Melody) in the real transformers on-disk layout.

The directory it writes (config.json, generation_config.json, model.safetensors, preprocessor_config.json,
tokenizer files) is what `facebook/musicgen-small` holds, so `MusicgenForConditionalGeneration.from_pretrained`
and `AutoProcessor.from_pretrained` load it exactly as they load the hub model. Every component is the real
class (T5 text encoder, EnCodec, MusicGen decoder, MusicgenProcessor with a T5 tokenizer built offline); only the
widths are small. `size="small"` builds musicgen-small's real architecture (random weights, ~590 M parameters)
for benchmarks.

    python tests/tiny_musicgen.py OUT_DIR [--size tiny|small] [--melody] [--layers N]
"""
import argparse
import sys
from pathlib import Path

import torch

# Words the tiny tokenizer knows; anything else maps to <unk>, which is all a random model needs.
TINY_WORDS = ("a", "an", "the", "with", "and", "of", "in", "music", "song", "track", "piano", "guitar", "bass",
              "drums", "violin", "strings", "brass", "flute", "organ", "synth", "vocal", "choir", "orchestral",
              "electronic", "acoustic", "ambient", "jazz", "rock", "slow", "fast", "soft", "loud", "bright", "dark",
              "warm", "melody", "beat", "bpm", "solo", "quartet", "reverb", "distorted", "percussive")

# musicgen-small (facebook/musicgen-small config.json): T5-base text encoder; 32 kHz EnCodec with 4 codebooks of
# 2048 at 50 Hz; decoder hidden 1024, 24 layers, 16 heads, ffn 4096. FACTS.md "transformers MusicGen" measured the
# tiny sizes. The generation config is the hub's (sampling, top-k 250, guidance 3).
SIZES = {
    "tiny": dict(t5=dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8),
                 encodec=dict(num_filters=4, hidden_size=16, num_lstm_layers=1),
                 decoder=dict(hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4)),
    "small": dict(t5=dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
                  encodec=dict(num_filters=64, hidden_size=128, num_lstm_layers=2),
                  decoder=dict(hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16)),
}
CODEBOOK_SIZE = 2048
NUM_CODEBOOKS = 4


def build_model(size: str = "tiny", melody: bool = False, layers: int | None = None, seed: int = 0):
    """A MusicGen model of real components at `size`, weights drawn from torch.manual_seed(seed)."""
    from transformers import (EncodecConfig, GenerationConfig, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration, T5Config)

    spec = SIZES[size]
    torch.manual_seed(seed)
    text = T5Config(vocab_size=_tokenizer_vocab_size(size), feed_forward_proj="relu", dropout_rate=0.0,
                    **spec["t5"])
    # upsampling 8*5*4*4 = 640 samples per frame at 32 kHz = 50 Hz; bandwidth 2.2 kbps = 4 codebooks of 11 bits.
    audio = EncodecConfig(sampling_rate=32000, codebook_size=CODEBOOK_SIZE, target_bandwidths=[2.2],
                          upsampling_ratios=[8, 5, 4, 4], use_causal_conv=False, use_conv_shortcut=False,
                          normalize=False, audio_channels=1, **spec["encodec"])
    decoder_options = dict(spec["decoder"])
    if layers is not None:
        decoder_options["num_hidden_layers"] = int(layers)
    decoder_class = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    decoder = decoder_class(vocab_size=CODEBOOK_SIZE, num_codebooks=NUM_CODEBOOKS, pad_token_id=CODEBOOK_SIZE,
                            bos_token_id=CODEBOOK_SIZE, decoder_start_token_id=CODEBOOK_SIZE, dropout=0.0,
                            attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=2048,
                            **decoder_options)
    if melody:
        config = MusicgenMelodyConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(),
                                      decoder=decoder.to_dict(), num_chroma=12, chroma_length=235)
        model = MusicgenMelodyForConditionalGeneration(config)
    else:
        config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
        model = MusicgenForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=CODEBOOK_SIZE, bos_token_id=CODEBOOK_SIZE, pad_token_id=CODEBOOK_SIZE,
        do_sample=True, top_k=250, guidance_scale=3.0, max_length=1500)
    return model.eval()


def build_processor(size: str = "tiny", melody: bool = False):
    """MusicgenProcessor (the melody model: its tokenizer alone) with a T5 (Unigram) tokenizer built offline from a word list."""
    from transformers import EncodecFeatureExtractor, MusicgenProcessor, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"\u2581{word}", -1.0) for word in _words(size)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)
    if melody:
        # MusicgenMelodyFeatureExtractor needs torchaudio, whose PyPI wheels do not import here (FACTS.md): the
        # melody fixture ships the tokenizer alone and tests condition on chroma arrays (diffusion/musicgen/loading.py).
        return tokenizer
    return MusicgenProcessor(EncodecFeatureExtractor(feature_size=1, sampling_rate=32000, padding_value=0.0),
                             tokenizer)


def _words(size: str):
    if size == "tiny":
        return TINY_WORDS
    # T5-base's vocabulary has 32,128 embedding rows; the size of the table is what a benchmark measures.
    return TINY_WORDS + tuple(f"w{index}" for index in range(32128 - 3 - len(TINY_WORDS)))


def _tokenizer_vocab_size(size: str) -> int:
    return 3 + len(_words(size))


def save_model(out_dir, size: str = "tiny", melody: bool = False, layers: int | None = None, seed: int = 0) -> Path:
    """Build and save_pretrained model + processor into out_dir (the hub layout); returns the directory."""
    out_dir = Path(out_dir)
    build_model(size, melody, layers, seed).save_pretrained(out_dir)
    build_processor(size, melody).save_pretrained(out_dir)
    return out_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--melody", action="store_true", help="MusicGen Melody (chroma-conditioned) instead")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: the size's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    print(save_model(args.out_dir, args.size, args.melody, args.layers, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

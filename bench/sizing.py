"""Sizing a real run, computed from the architectures (no GPU needed; the README's "Sizing a real run" quotes it).

Each real component is built with its published configuration on torch's meta device (shapes, no weights, no
memory), its parameters counted, and one forward run under torch.utils.flop_counter.FlopCounterMode on meta
tensors: the floating-point operations of the real computation, counted, not measured. Audio sizes are rate x
channels x 16 bits x seconds. musicnn is small enough to build for real on the CPU.

    .venv/bin/python bench/sizing.py                 # the table, markdown
    .venv/bin/python bench/sizing.py --seconds 30    # another clip length

What it cannot give is time on a device: time = FLOPs / (peak x utilisation) for the compute-bound DiT, CLAP and
decoders, and for MusicGen's one-token steps weight bytes / memory bandwidth per step (a lower bound; per-step
overheads of generate() come on top). Those divisions are in the README, labelled as such.
"""
import argparse
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

import torch  # noqa: E402
from tiny_clap import AUDIO_TOWERS  # noqa: E402
from tiny_musicgen import CODEBOOK_SIZE, NUM_CODEBOOKS  # noqa: E402
from tiny_musicgen import SIZES as MUSICGEN_SIZES  # noqa: E402
from tiny_stable_audio import SIZES as SAO_SIZES  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from embeddings.musicnn import MusicnnEmbedder  # noqa: E402

META = torch.device("meta")
# musicgen-medium and -large (facebook/musicgen-{medium,large} config.json): T5-base text encoder and 32 kHz EnCodec
# as musicgen-small; decoder widths below.
MUSICGEN_DECODERS = {
    "small": MUSICGEN_SIZES["small"]["decoder"],
    "medium": dict(hidden_size=1536, ffn_dim=6144, num_hidden_layers=48, num_attention_heads=24),
    "large": dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=48, num_attention_heads=32),
}
T5_BASE_VOCAB = 32128
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)
TEXT_TOKENS = 128            # Stable Audio's T5 prompt length; MusicGen's prompts are shorter (taken as 32)
MUSICGEN_PROMPT_TOKENS = 32


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops(call) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        call()
    return counter.get_total_flops()


def stable_audio(seconds: float) -> dict:
    from diffusers import AutoencoderOobleck, StableAudioDiTModel
    from diffusers.models.embeddings import get_1d_rotary_pos_embed
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel

    spec = SAO_SIZES["full"]
    hop = math.prod(spec["downsampling_ratios"])
    window = math.ceil(spec["max_seconds"] * spec["sampling_rate"] / hop)   # 1024 latent frames, always denoised
    with META:
        dit = StableAudioDiTModel(sample_size=window, in_channels=spec["latent_channels"], num_layers=spec["layers"],
                                  attention_head_dim=spec["head_dim"], num_attention_heads=spec["heads"],
                                  num_key_value_attention_heads=spec["kv_heads"], out_channels=spec["latent_channels"],
                                  cross_attention_dim=spec["cross_dim"], time_proj_dim=spec["time_proj_dim"],
                                  global_states_input_dim=2 * spec["cross_dim"],
                                  cross_attention_input_dim=spec["cross_dim"]).eval()
        vae = AutoencoderOobleck(encoder_hidden_size=spec["encoder_hidden_size"],
                                 downsampling_ratios=spec["downsampling_ratios"],
                                 channel_multiples=spec["channel_multiples"], decoder_channels=spec["decoder_channels"],
                                 decoder_input_channels=spec["latent_channels"], audio_channels=2,
                                 sampling_rate=spec["sampling_rate"]).eval()
        t5 = T5EncoderModel(T5Config(vocab_size=T5_BASE_VOCAB, feed_forward_proj="relu", **spec["t5"]))
        projection = StableAudioProjectionModel(text_encoder_dim=spec["t5"]["d_model"],
                                                conditioning_dim=spec["cross_dim"], min_value=0, max_value=512)
    rotary = get_1d_rotary_pos_embed(spec["head_dim"] // 2, window + 1, use_real=True, repeat_interleave_real=False)
    rotary = tuple(part.to(META) for part in rotary)
    cfg_rows = 2   # classifier-free guidance runs an unconditional row beside each sample

    def dit_step():
        dit(torch.zeros(cfg_rows, spec["latent_channels"], window, device=META), torch.zeros(1, device=META),
            encoder_hidden_states=torch.zeros(cfg_rows, TEXT_TOKENS + 2, spec["cross_dim"], device=META),
            global_hidden_states=torch.zeros(cfg_rows, 1, 2 * spec["cross_dim"], device=META),
            rotary_embedding=rotary)

    # The project decodes only the kept frames plus the decoder's receptive radius (12 latent frames each side).
    frames = math.ceil(seconds * spec["sampling_rate"] / hop) + 2 * 12
    return {"dit": parameters(dit), "vae": parameters(vae), "t5": parameters(t5), "projection": parameters(projection),
            "dit_step_flops": flops(dit_step),
            "decode_flops": flops(lambda: vae.decode(torch.zeros(1, spec["latent_channels"], frames, device=META))),
            "wav_bytes": int(seconds * spec["sampling_rate"]) * 2 * 2 + 44, "window_frames": window}


def musicgen(size: str, seconds: float) -> dict:
    from transformers import (EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              T5Config)

    text = T5Config(vocab_size=T5_BASE_VOCAB, feed_forward_proj="relu", **MUSICGEN_SIZES["small"]["t5"])
    audio = EncodecConfig(sampling_rate=32000, codebook_size=CODEBOOK_SIZE, target_bandwidths=[2.2],
                          upsampling_ratios=[8, 5, 4, 4], use_causal_conv=False, use_conv_shortcut=False,
                          normalize=False, audio_channels=1, **MUSICGEN_SIZES["small"]["encodec"])
    decoder = MusicgenDecoderConfig(vocab_size=CODEBOOK_SIZE, num_codebooks=NUM_CODEBOOKS, pad_token_id=CODEBOOK_SIZE,
                                    bos_token_id=CODEBOOK_SIZE, decoder_start_token_id=CODEBOOK_SIZE,
                                    max_position_embeddings=2048, **MUSICGEN_DECODERS[size])
    with META:
        model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text.to_dict(),
                                                                audio_encoder=audio.to_dict(),
                                                                decoder=decoder.to_dict())).eval()
    lm = model.decoder
    layers, width = decoder.num_hidden_layers, decoder.hidden_size
    positions = int(round(seconds * 50)) + NUM_CODEBOOKS - 1   # 50 Hz frames and the delay pattern's extra steps
    # One generated position per row costs ~2 FLOPs per matmul weight, plus attention over the cached positions and
    # the prompt's tokens (2 x 2 x width per attended position and layer); CFG doubles the rows.
    weights = parameters(lm) - sum(p.numel() for p in lm.model.decoder.embed_tokens.parameters())
    attention = sum(4 * layers * width * (p + MUSICGEN_PROMPT_TOKENS) for p in range(positions))
    return {"decoder": parameters(lm), "t5": parameters(model.text_encoder), "encodec": parameters(model.audio_encoder),
            "layers": layers, "width": width, "positions": positions,
            "clip_flops": 2 * (2 * weights * positions + attention),
            "decode_flops": encodec_decode_flops(audio, positions - NUM_CODEBOOKS + 1),
            "wav_bytes": int(seconds * 32000) * 2 + 44}


def encodec_decode_flops(config, frames: int) -> int:
    """EnCodec's decoder reads its padding from tensors (.item()), which meta tensors cannot give: it is built for
    real on the CPU (59 M parameters) and decodes zeros."""
    from transformers import EncodecModel

    model = EncodecModel(config).eval()
    return flops(lambda: model.decode(torch.zeros(1, 1, NUM_CODEBOOKS, frames, dtype=torch.long), [None]))


def clap() -> dict:
    from transformers import ClapConfig, ClapModel

    config = ClapConfig(text_config=ROBERTA_BASE, audio_config=dict(AUDIO_TOWERS["htsat-base"]), projection_dim=512)
    with META:
        model = ClapModel(config).eval()
    features = torch.zeros(1, 1, 1001, 64, device=META)   # 10 s at 48 kHz: 1001 mel frames of 64 bins
    return {"parameters": parameters(model), "audio": parameters(model.audio_model) + parameters(model.audio_projection),
            "clip_flops": flops(lambda: model.get_audio_features(input_features=features))}


def musicnn() -> dict:
    embedder = MusicnnEmbedder(model="MTT_musicnn")
    network = embedder.network
    patch = torch.zeros(1, 187, 96)   # one 3 s patch of 96 mel bands
    return {"parameters": parameters(network), "patch_flops": flops(lambda: network(patch))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    args = parser.parse_args(argv)
    seconds = args.seconds
    sao = stable_audio(seconds)
    rows = [("Stable Audio Open 1.0 DiT", sao["dit"], f"{sao['dit_step_flops'] / 1e12:.2f} TFLOP per sampler step "
             f"(2 CFG rows x {sao['window_frames']} latent frames, whatever --seconds)"),
            ("Stable Audio Open 1.0 Oobleck VAE", sao["vae"], f"{sao['decode_flops'] / 1e12:.2f} TFLOP per decoded "
             f"{seconds:g} s clip"),
            ("Stable Audio Open 1.0 T5 + projection", sao["t5"] + sao["projection"], "once per prompt")]
    for size in MUSICGEN_DECODERS:
        model = musicgen(size, seconds)
        rows.append((f"MusicGen {size} decoder ({model['layers']} layers x {model['width']})", model["decoder"],
                     f"{model['clip_flops'] / 1e12:.2f} TFLOP per {seconds:g} s sample ({model['positions']} "
                     "positions x 2 CFG rows, logit lens)"))
    rows.append(("MusicGen T5-base + EnCodec 32 kHz", model["t5"] + model["encodec"],
                 f"{model['decode_flops'] / 1e9:.1f} GFLOP per decoded clip"))
    clap_model = clap()
    rows.append(("CLAP HTSAT-base (larger_clap_*), audio tower", clap_model["audio"],
                 f"{clap_model['clip_flops'] / 1e9:.1f} GFLOP per clip (10 s window)"))
    net = musicnn()
    rows.append(("musicnn MTT_musicnn", net["parameters"], f"{net['patch_flops'] / 1e9:.2f} GFLOP per 3 s patch"))
    print("| component | parameters | fp32 / fp16 weights | compute (counted) |\n|---|---|---|---|")
    for name, count, compute in rows:
        print(f"| {name} | {count / 1e6:,.1f} M | {4 * count / 2**30:.2f} / {2 * count / 2**30:.2f} GiB | {compute} |")
    print(f"\nwav per clip, {seconds:g} s: Stable Audio (44.1 kHz stereo 16-bit) {sao['wav_bytes'] / 1e6:.3f} MB; "
          f"MusicGen (32 kHz mono 16-bit) {model['wav_bytes'] / 1e6:.3f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ideal reference generator: closed-form denoiser, diffusers scheduler loop, observer, bank and prior."""
import math

import numpy as np
import pytest
import torch

from data.stage import InputError
from diffusion import bank as reference_bank
from diffusion import load_generator
from diffusion.bank import CLIP_RMS, ReferenceBank, load_bank, save_bank
from diffusion.base import Conditioning, TrajectoryObserver
from diffusion.ideal import IdealGenerator

SYNTHETIC_RATE = 8000
SYNTHETIC_SAMPLES = 4000  # 0.5 s


def synthetic_bank() -> ReferenceBank:
    """A small bank of harmonic tones and noise bursts, labelled like the soundfont bank (fast to sample)."""
    time = np.arange(SYNTHETIC_SAMPLES) / SYNTHETIC_RATE
    rng = np.random.default_rng(0)

    def tone(pitch_hz, harmonic_decay):
        wave = sum(harmonic_decay ** k * np.sin(2 * np.pi * pitch_hz * (k + 1) * time + k) for k in range(8))
        return wave * np.exp(-time * 2)

    timbres = {"brass": (0.9, "acoustic"), "string": (0.6, "acoustic"), "keyboard": (0.3, "electronic")}
    clips, clip_ids, labels = [], [], []
    for family, (decay, source) in timbres.items():
        for pitch in (220.0, 330.0, 440.0):
            clips.append(tone(pitch * (1 + 0.01 * len(clips)), decay))
            clip_ids.append(f"{family}-{int(pitch)}")
            labels.append((family, source))
    for index in range(3):
        clips.append(rng.standard_normal(SYNTHETIC_SAMPLES) * np.exp(-(time % 0.125) * 40))
        clip_ids.append(f"drum-{index}")
        labels.append(("drum",))
    clips.append(tone(262.0, 0.9) + tone(131.0, 0.6))
    clip_ids.append("mix-brass-string")
    labels.append(("brass", "string", "acoustic"))
    audio = np.stack([clip * CLIP_RMS / np.sqrt(np.mean(clip ** 2)) for clip in clips]).astype(np.float32)
    return ReferenceBank(audio, clip_ids, labels, SYNTHETIC_RATE, recipe={"synthetic": 1})


@pytest.fixture(scope="module")
def tiny():
    return IdealGenerator(bank=synthetic_bank())


@pytest.fixture(scope="module")
def default_generator(tmp_path_factory):
    """The real default bank, rendered from the soundfont into an empty bank directory on first use."""
    directory = tmp_path_factory.mktemp("default-bank")
    generator = IdealGenerator(model=str(directory))
    assert generator.provenance()["checkpoint_sha256"] == load_bank(directory).sha256
    assert reference_bank.read_bank_sidecar(directory)["recipe"] == reference_bank.default_recipe()
    return generator


def test_observer_captures_exactly_the_requested_steps_and_kinds(tiny):
    observer = TrajectoryObserver([0, 7, 49], ["x0", "xt"])
    final = tiny.sample(Conditioning("brass stabs", ("brass",)), seed=3, num_samples=2, seconds=0.5,
                        observer=observer)
    assert [(c.position, c.kind) for c in observer.captured] == [(0, "x0"), (0, "xt"), (7, "x0"), (7, "xt"),
                                                            (49, "x0"), (49, "xt")]
    rank = tiny.latent_space(0.5).rank
    assert all(c.latent.shape == (2, rank) for c in observer.captured)
    sigmas = [c.sigma for c in observer.captured if c.kind == "x0"]
    assert sigmas[0] == pytest.approx(100.0) and sigmas[-1] == pytest.approx(0.01, rel=1e-4)
    # The sampler's last step goes to sigma 0, where the scheduler returns the clean estimate itself.
    assert torch.equal(observer.captured[-1].latent, final)
    assert torch.allclose(observer.captured[-2].latent, final)


def test_scheduler_converted_x0_equals_the_closed_form_posterior_mean(tiny):
    steps = list(range(50))
    observer = TrajectoryObserver(steps, ["x0", "xt"])
    tiny.sample(Conditioning("strings", ("string",)), seed=11, num_samples=2, seconds=0.5, observer=observer)
    x0 = {c.position: c.latent for c in observer.captured if c.kind == "x0"}
    xt = {c.position: c.latent for c in observer.captured if c.kind == "xt"}
    sigma = {c.position: c.sigma for c in observer.captured}
    space, log_prior = tiny.latent_space(0.5), tiny.log_prior(["string"])
    for step in range(1, 50):
        # The input of step i is the latent after step i - 1.
        closed_form, _ = tiny.denoise(xt[step - 1].numpy(), sigma[step], space, log_prior)
        scale = 1.0 + float(np.abs(closed_form).max())
        np.testing.assert_allclose(x0[step].numpy(), closed_form, rtol=0, atol=2e-5 * scale,
                                   err_msg=f"step {step}")
    from diffusers import CosineDPMSolverMultistepScheduler

    assert type(tiny.scheduler) is CosineDPMSolverMultistepScheduler
    config = tiny.scheduler.config
    assert (config.sigma_min, config.sigma_max, config.solver_order, config.prediction_type) == \
        (0.01, 100.0, 2, "v_prediction")


def test_capture_changes_nothing(tiny):
    silent = tiny.sample(Conditioning("brass", ("brass",)), seed=5, num_samples=2, seconds=0.5, observer=None)
    observed = tiny.sample(Conditioning("brass", ("brass",)), seed=5, num_samples=2, seconds=0.5,
                           observer=TrajectoryObserver(range(50), ["x0", "xt"]))
    assert torch.equal(silent, observed)
    assert np.array_equal(tiny.decode(silent, 0.5), tiny.decode(observed, 0.5))


def test_seeded_rows_are_deterministic_and_independent_of_batching(tiny):
    batch = tiny.sample(Conditioning("keys", ("keyboard",)), seed=40, num_samples=3, seconds=0.5, observer=None)
    again = tiny.sample(Conditioning("keys", ("keyboard",)), seed=40, num_samples=3, seconds=0.5, observer=None)
    singles = [tiny.sample(Conditioning("keys", ("keyboard",)), seed=40 + row, num_samples=1, seconds=0.5,
                           observer=None) for row in range(3)]
    assert torch.equal(batch, again)
    assert torch.equal(batch, torch.cat(singles))
    other = tiny.sample(Conditioning("keys", ("keyboard",)), seed=41, num_samples=3, seconds=0.5, observer=None)
    assert not torch.equal(batch, other)


def test_decoding_a_clip_coordinate_gives_the_clip_back(tiny):
    space = tiny.latent_space(0.5)
    audio = tiny.decode(torch.from_numpy(space.coordinates[:4]).float(), 0.5)
    assert audio.shape == (4, 1, SYNTHETIC_SAMPLES)
    np.testing.assert_allclose(audio[:, 0], tiny.bank.audio[:4], atol=1e-4)
    # Clips are unit vectors in latent units, so noise levels mean the same for every clip length.
    np.testing.assert_allclose(np.linalg.norm(space.coordinates, axis=1), 1.0, atol=1e-3)


def test_shorter_clips_use_the_start_of_every_bank_clip(tiny):
    latents = tiny.sample(Conditioning("brass", ("brass",)), seed=1, num_samples=1, seconds=0.25, observer=None)
    assert tiny.decode(latents, 0.25).shape == (1, 1, SYNTHETIC_SAMPLES // 2)
    with pytest.raises(InputError, match="outside"):
        tiny.sample(Conditioning("brass", ("brass",)), seed=1, num_samples=1, seconds=0.75, observer=None)


def test_prior_favours_matching_clips_and_all_families_of_the_prompt(tiny):
    ids = tiny.bank.clip_ids
    prior = np.exp(tiny.log_prior(["brass"]))
    assert prior.sum() == pytest.approx(1.0)
    brass = [i for i, labels in enumerate(tiny.bank.labels) if labels == ("brass", "acoustic")]
    drums = [i for i, labels in enumerate(tiny.bank.labels) if "drum" in labels]
    assert prior[brass].sum() > 0.99 and prior[drums].max() < 1e-3 * prior[brass].min()
    both = np.exp(tiny.log_prior(["brass", "string"]))
    assert both.argmax() == ids.index("mix-brass-string")
    uniform = np.exp(tiny.log_prior(["reverb"]))
    np.testing.assert_allclose(uniform, 1 / len(ids))
    # A named source lowers clips of another source.
    electronic = np.exp(tiny.log_prior(["electronic"]))
    assert electronic[ids.index("keyboard-220")] > electronic[ids.index("brass-220")]


def test_bad_settings_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown preset 'fast'"):
        load_generator("ideal", preset="fast")
    with pytest.raises(InputError, match="fp16"):
        load_generator("ideal", dtype="fp16")
    with pytest.raises(InputError, match="CPU"):
        load_generator("ideal", device="cuda")
    with pytest.raises(InputError, match="at least 1"):
        load_generator("ideal", steps=0)
    file_model = tmp_path / "bank.npy"
    file_model.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        load_generator("ideal", model=str(file_model))


def test_bank_directory_round_trip_and_corruption(tmp_path):
    bank = synthetic_bank()
    save_bank(bank, tmp_path / "bank")
    loaded = load_bank(tmp_path / "bank")
    assert loaded.sha256 == bank.sha256 and loaded.clip_ids == bank.clip_ids and loaded.labels == bank.labels
    generator = load_generator("ideal", model=str(tmp_path / "bank"))
    assert generator.provenance()["checkpoint_sha256"] == bank.sha256
    assert generator.sample_rate == SYNTHETIC_RATE and generator.max_seconds == pytest.approx(0.5)
    (tmp_path / "bank" / "clips.csv").write_text("clip_id,labels\nx,brass\n")
    with pytest.raises(InputError, match="clips.csv"):
        load_bank(tmp_path / "bank")


def test_default_bank_is_disjoint_from_probe_instruments_and_covers_every_family(default_generator):
    from data import soundfont as gm
    from data.vocabulary import FAMILIES

    bank_programs = {entry.program for entry in reference_bank.bank_programs()}
    assert bank_programs and not bank_programs & {entry.program for entry in gm.programs_for(gm.PROBE)}
    bank = default_generator.bank
    solo_programs = {int(clip_id[1:4]) for clip_id in bank.clip_ids if clip_id.startswith("p")}
    assert solo_programs <= bank_programs
    present = {label for labels in bank.labels for label in labels}
    assert set(FAMILIES) | {"drum"} <= present
    rms = np.sqrt(np.mean(bank.audio.astype(np.float64) ** 2, axis=1))
    # A struck held note (mallet) hits the peak limit before the target RMS: it may stay a few times quieter.
    assert rms.max() <= CLIP_RMS * 1.0001 and rms.min() > CLIP_RMS / 8
    assert np.median(rms) > CLIP_RMS * 0.99
    assert np.abs(bank.audio).max() <= reference_bank.PEAK_LIMIT + 1e-6
    assert default_generator.sample_rate == 16000 and default_generator.max_seconds == 4.0


def test_brass_prompt_starts_as_a_blend_and_ends_on_a_brass_clip(default_generator):
    generator = default_generator
    weights = {}
    latents = generator.sample(Conditioning("a brass fanfare", ("brass",)), seed=2024, num_samples=2,
                               seconds=4.0, observer=None, weights_callback=lambda step, sigma, w: weights.update({step: w}))
    first, last = weights[generator.default_capture[0]], weights[generator.axis.positions[-1]]
    brass = np.array(["brass" in labels for labels in generator.bank.labels])
    entropy = -(first * np.log(np.maximum(first, 1e-300))).sum(axis=1)
    # Early: a prior-weighted blend of many brass clips (log 5 ≈ 1.6 nats = 5 equally weighted clips).
    assert np.all(entropy > math.log(5)) and np.all(first.max(axis=1) < 0.3)
    assert np.all(first[:, brass].sum(axis=1) > 0.99)
    # Late: one clip, and it is brass; the decoded audio is that clip.
    assert np.all(last.max(axis=1) > 0.999)
    chosen = last.argmax(axis=1)
    assert brass[chosen].all()
    audio = generator.decode(latents, 4.0)[:, 0]
    for row, clip in enumerate(chosen):
        np.testing.assert_allclose(audio[row], generator.bank.audio[clip], atol=2e-3)


def test_realised_content_is_the_posterior_mass_of_each_label_and_ends_on_the_chosen_clip(tiny):
    """Stage 6's second yardstick: what the clean estimate is made of, step by step."""
    observer = TrajectoryObserver(range(50), ["x0"])
    weights = {}
    latents = tiny.sample(Conditioning("brass and strings", ("brass", "string")), seed=9, num_samples=3,
                          seconds=0.5, observer=observer, weights_callback=lambda s, sigma, w: weights.update({s: w}))
    masks = {label: np.array([label in labels for labels in tiny.bank.labels]) for label in tiny.content_labels}
    two_families = np.array([len(set(labels) & {"brass", "string", "keyboard", "drum"}) == 2
                             for labels in tiny.bank.labels])
    for captured in observer.captured:
        w = weights[captured.position]
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)      # the weights behind it sum to 1 per clip
        assert set(captured.content) == set(tiny.content_labels)
        for label, mask in masks.items():
            np.testing.assert_allclose(captured.content[label], w[:, mask].sum(axis=1), rtol=1e-12, atol=1e-15)
        family_mass = sum(captured.content[label] for label in ("brass", "string", "keyboard", "drum"))
        # Every clip carries one family, the mix clip two: the family masses add up to 1 + the mix's weight.
        np.testing.assert_allclose(family_mass, 1.0 + w[:, two_families].sum(axis=1), rtol=1e-12)
    early = observer.captured[5].content
    assert not np.all(np.isin(np.round(early["brass"], 6), [0.0, 1.0]))   # a blend early on
    final = observer.captured[-1].content
    chosen = weights[49].argmax(axis=1)
    audio = tiny.decode(latents, 0.5)[:, 0]
    for row, clip in enumerate(chosen):
        np.testing.assert_allclose(audio[row], tiny.bank.audio[clip], atol=1e-4)   # committed to that clip
        expected = {label: float(label in tiny.bank.labels[clip]) for label in tiny.content_labels}
        assert {label: round(float(final[label][row]), 9) for label in tiny.content_labels} == expected

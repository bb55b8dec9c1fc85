"""The study's large rows (issue 4): Hugging Face models, text and large image data, the
language tasks, and every new preset end to end at a tiny size on fixture data written
here in the published formats. No test touches the network (the hub is blocked)."""

from __future__ import annotations

import csv
import json
import math
import pickle
import sys

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="run directories need pyarrow: pip install -e '.[study]'")
pd = pytest.importorskip("pandas", reason="these tests read runs with pandas: pip install -e '.[study]'")
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import regimes  # noqa: E402
from regimes.data import (  # noqa: E402
    DataNotFoundError,
    load_dataset,
    text,  # noqa: E402
)
from regimes.experiment import get_preset, train_run  # noqa: E402
from regimes.experiment.tasks import get_task  # noqa: E402
from regimes.zoo import create_model, model_sites  # noqa: E402

WORDS = "the a good bad film movie great awful plot actor story fun dull long short music scene".split()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails: never the hub
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGIMES_DATA", raising=False)


def _sentences(rng, n, low=3, high=12):
    return [" ".join(rng.choice(WORDS, rng.integers(low, high))) for _ in range(n)]


# ---- fixture data in the published formats ------------------------------------------------


def write_sst2(root, rng, n_train=48, n_dev=16):
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [f"{s}\t{int('good' in s or 'great' in s)}" for s in _sentences(rng, n)]
        (folder / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")


def write_ag_news(root, rng, n_train=48, n_test=16):
    folder = root / "ag_news_csv"
    folder.mkdir(parents=True)
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        with open(folder / name, "w", newline="") as file:
            writer = csv.writer(file, quoting=csv.QUOTE_ALL)
            for i, (title, body) in enumerate(zip(_sentences(rng, n), _sentences(rng, n))):
                writer.writerow([str(i % 4 + 1), title, body + "\\with a, comma"])


def write_squad(root, rng, n_paragraphs=(8, 4)):
    folder = root / "squad"
    folder.mkdir(parents=True)
    for name, n in zip(("train-v1.1.json", "dev-v1.1.json"), n_paragraphs):
        data = []
        for _ in range(n):
            context = " ".join(_sentences(rng, 4))
            words = context.split()
            qas = [
                {
                    "id": str(rng.integers(1e9)),
                    "question": f"what is word {k}?",
                    "answers": [{"text": " ".join(words[k : k + 2]), "answer_start": 0}] * 2,
                }
                for k in range(3)
            ]
            data.append({"title": "t", "paragraphs": [{"context": context, "qas": qas}]})
        (folder / name).write_text(json.dumps({"version": "1.1", "data": data}))


def write_wikitext(root, rng):
    folder = root / "wikitext-2-raw"
    folder.mkdir(parents=True)
    for name, n in (("wiki.train.raw", 80), ("wiki.valid.raw", 30), ("wiki.test.raw", 10)):
        lines = [" = Title = ", ""] + [f" {s} . " for s in _sentences(rng, n)]
        (folder / name).write_text("\n".join(lines) + "\n")


def write_cifar100(root, rng, n_train=40, n_test=16):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": list(rng.integers(0, 100, n)),
        }
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file, protocol=2)


def _jpeg(path, rng, size):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


TINY_WNIDS = ["n01443537", "n01629819", "n01641577"]


def write_tinyimagenet(root, rng, per_class=12):
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for wnid in TINY_WNIDS:
        for i in range(per_class):
            _jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng, (64, 64))
    lines = []
    for i in range(9):
        _jpeg(folder / "val" / "images" / f"val_{i}.JPEG", rng, (64, 64))
        lines.append(f"val_{i}.JPEG\t{TINY_WNIDS[i % 3]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


FOOD_CLASSES = ["apple_pie", "baby_back_ribs"]


def write_food101(root, rng, per_class=(12, 4)):
    folder = root / "food-101"
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "classes.txt").write_text("\n".join(FOOD_CLASSES) + "\n")
    listings = {"train.txt": [], "test.txt": []}
    for listing, n in zip(listings, per_class):
        for name in FOOD_CLASSES:
            for _ in range(n):
                image_id = f"{name}/{rng.integers(1e7)}"
                _jpeg(
                    folder / "images" / f"{image_id}.jpg", rng, (int(rng.integers(30, 50)), int(rng.integers(30, 50)))
                )
                listings[listing].append(image_id)
    for listing, ids in listings.items():
        (folder / "meta" / listing).write_text("\n".join(ids) + "\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    pytest.importorskip("PIL")
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for write in (
        write_sst2,
        write_ag_news,
        write_squad,
        write_wikitext,
        write_cifar100,
        write_tinyimagenet,
        write_food101,
    ):
        write(root, rng)
    return root


# ---- every new preset, end to end at a tiny size ---------------------------------------------

TEXT = dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, vocab_size=300)
VISION = dict(image_size=16)

# preset: (model_args changes, data_args changes, sites expected)
TINY = {
    "resnet34-cifar100": (dict(depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8), {}, 5),
    "resnet34-tinyimagenet": (dict(depths=[1, 1], hidden_sizes=[8, 16], embedding_size=8), {}, 5),
    "efficientnetb0-cifar100": (dict(width_coefficient=0.25, depth_coefficient=0.3), {}, 25),
    "efficientnetb0-tinyimagenet": (dict(width_coefficient=0.25, depth_coefficient=0.3), {}, 25),
    "xlnet-sst2": (TEXT, dict(vocab_size=300, max_length=16), 2),
    "roberta-ag-news": (dict(TEXT, max_length=32), dict(vocab_size=300, max_length=32), 2),
    "t5-squad": (dict(TEXT, head_size=8), dict(vocab_size=300, max_length=48, target_length=8), 4),
    "gpt2-wikitext": (dict(TEXT, max_length=16), dict(vocab_size=300, max_length=16), 2),
    "vitb16-cifar100": (
        dict(VISION, patch_size=8, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32),
        {},
        2,
    ),
    "swin-food101": (
        dict(VISION, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4),
        dict(image_size=24),
        2,
    ),
    "pvt-tinyimagenet": (
        dict(
            VISION,
            depths=[1, 1],
            hidden_sizes=[8, 16],
            num_heads=[1, 2],
            mlp_ratios=[2, 2],
            sequence_reduction_ratios=[2, 1],
            patch_sizes=[4, 2],
        ),
        {},
        2,
    ),
}

# The study's rows (SPEC section 4): optimizer, weight decay, lr, max epochs.
STUDY_ROWS = {
    "resnet34-cifar100": ("adam", 1e-4, 1e-2, 200),
    "resnet34-tinyimagenet": ("sgd", 5e-3, 1e-3, 200),
    "efficientnetb0-cifar100": ("adamw", 1e-3, 2e-2, 200),
    "efficientnetb0-tinyimagenet": ("adamw", 1e-3, 2e-2, 200),
    "xlnet-sst2": ("adamw", 1e-2, 2e-5, 50),
    "roberta-ag-news": ("adamw", 1e-2, 2e-5, 50),
    "t5-squad": ("adamw", 1e-2, 1e-4, 50),
    "gpt2-wikitext": ("adamw", 1e-2, 3e-4, 50),
    "vitb16-cifar100": ("adamw", 5e-2, 1e-4, 50),
    "swin-food101": ("adamw", 5e-2, 1e-4, 50),
    "pvt-tinyimagenet": ("adamw", 5e-2, 5e-4, 50),
}


@pytest.mark.parametrize("preset", list(STUDY_ROWS))
def test_presets_hold_the_winning_configuration(preset):
    config = get_preset(preset)
    assert (config.optimizer, config.weight_decay, config.lr, config.max_epochs) == STUDY_ROWS[preset]
    transformer = config.max_epochs == 50
    assert config.min_delta == (0.0 if transformer else 0.01)
    assert config.precision == "bf16"
    assert (config.momentum, config.nesterov) == ((0.9, True) if preset == "resnet34-tinyimagenet" else (0.0, False))
    assert bool(model_sites(config.model)) == transformer  # Transformers: only the feed-forward sites
    if "vocab_size" in config.data_args:
        assert config.model_args["vocab_size"] == config.data_args["vocab_size"]


@pytest.mark.parametrize("preset", list(TINY))
def test_preset_runs_end_to_end_at_a_tiny_size(preset, data_root, tmp_path):
    model_changes, data_changes, num_sites = TINY[preset]
    config = get_preset(preset)
    # bf16 autocast is exercised by the Transformers; the CNNs run fp32 here because the
    # CPU's first bf16 depthwise convolutions take seconds to set up.
    precision = "bf16" if config.max_epochs == 50 else "fp32"
    config = config.replace(
        model_args={**config.model_args, **model_changes},
        data_args={**config.data_args, **data_changes},
        max_epochs=1,
        batch_size=8,
        precision=precision,
    )
    summary = train_run(config, tmp_path / "run", data_dir=data_root)
    epochs = pd.read_parquet(tmp_path / "run" / "epochs.parquet")
    steps = pd.read_parquet(tmp_path / "run" / "steps")

    assert summary["status"] == "finished" and summary["stop_epoch"] == 1
    assert summary["data_source"].startswith("local: ")
    assert len(summary["sites"]) == num_sites
    globs = model_sites(config.model)
    if globs:  # only the feed-forward ReLUs
        from fnmatch import fnmatchcase

        assert all(any(fnmatchcase(s, g) for g in globs) for s in summary["sites"])
    assert len(steps) == summary["steps"] == summary["batches_per_epoch"] > 0
    assert np.isfinite(steps.dw).all() and (steps.dw > 0).all() and steps.da.between(0, 1).all()
    val_score, val_loss = epochs.val_score[0], epochs.val_loss[0]
    if config.task == "causal-lm":
        assert summary["score_name"] == "perplexity" and summary["higher_is_better"] is False
        assert val_score == pytest.approx(math.exp(val_loss), rel=1e-6) and val_score > 1
    else:
        assert summary["higher_is_better"] is True and 0 <= val_score <= 1
    assert summary["score_name"] == {"seq2seq": "token accuracy", "causal-lm": "perplexity"}.get(
        config.task, "accuracy"
    )


# ---- tasks and probes -----------------------------------------------------------------------


def _unit_count(model, probe, sites):
    with regimes.Tracker(model, probe, sites=sites) as tracker:
        return {site.name: site.units for site in tracker.layout.sites}


def test_text_probe_carries_its_mask_so_padding_is_not_a_unit(data_root):
    splits = load_dataset("sst2", data_root, vocab_size=300, max_length=16)
    task = get_task("text-classification")
    probe = task.probe(splits.val.tensors, torch.arange(5), "cpu")
    assert set(probe) == {"input_ids", "attention_mask"}
    mask = probe["attention_mask"]
    assert (mask == 0).any() and mask.shape[1] == int(mask.sum(1).max())  # padded, trimmed to the longest
    model = create_model("roberta", num_classes=2, **dict(TEXT, max_length=16))
    units = _unit_count(model, probe, model_sites("roberta"))
    assert list(units.values()) == [int(mask.sum()) * 32] * 2  # real tokens x FFN width


def test_seq2seq_probe_masks_encoder_and_decoder_padding_apart(data_root):
    splits = load_dataset("squad", data_root, vocab_size=300, max_length=48, target_length=8)
    task = get_task("seq2seq")
    probe = task.probe(splits.val.tensors, torch.arange(4), "cpu")
    assert probe["input_ids"].shape == (4, 48) and probe["decoder_input_ids"].shape == (4, 8)
    assert (probe["decoder_input_ids"][:, 0] == text.PAD_ID).all()  # the decoder starts from <pad>
    model = create_model("t5", **dict(TEXT, head_size=8))
    units = _unit_count(model, probe, model_sites("t5"))
    encoder = int(probe["attention_mask"].sum()) * 32
    decoder = int(probe["decoder_attention_mask"].sum()) * 32
    assert [u for s, u in units.items() if ".encoder." in s] == [encoder, encoder]
    assert [u for s, u in units.items() if ".decoder." in s] == [decoder, decoder]


def test_seq2seq_scores_token_accuracy_over_the_target_only():
    targets = torch.tensor([[5, 6, 2, 0], [7, 2, 0, 0]])
    tensors = (torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long), targets)
    task = get_task("seq2seq")
    inputs, batch_targets = task.batch(tensors, torch.arange(2), "cpu")
    assert inputs["decoder_input_ids"].tolist() == [[0, 5, 6], [0, 7, 2]]  # shifted right, trimmed to 3

    class Oracle(torch.nn.Module):  # right on every target token but the first
        def forward(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask):
            logits = torch.nn.functional.one_hot(batch_targets, 10).float()
            logits[:, 0] = torch.nn.functional.one_hot(torch.tensor([9, 9]), 10).float()
            return logits

    _loss, correct, count = task.loss(Oracle(), (inputs, batch_targets))
    assert (int(correct), count) == (3, 5)  # 5 real target tokens, padding excluded
    assert task.score(0.0, 3, 5) == 0.6


def test_causal_lm_score_is_perplexity_and_lower_is_better():
    task = get_task("causal-lm")
    assert task.higher_is_better is False
    assert task.score(2 * math.log(7.0), 0, 2) == pytest.approx(7.0)


def test_uint8_images_are_normalised_on_the_device(data_root):
    splits = load_dataset("tinyimagenet", data_root)
    assert splits.train.tensors[0].dtype == torch.uint8 and splits.input_shape == (3, 64, 64)
    task = get_task("classification")
    task.setup(splits)
    images, labels = task.batch(splits.train.tensors, torch.arange(4), "cpu")
    raw = splits.train.tensors[0][:4].float() / 255
    expected = (raw - torch.tensor(splits.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(splits.pixel_std).view(
        1, 3, 1, 1
    )
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, expected)


# ---- data in the published formats ------------------------------------------------------------


def test_text_sets_read_their_published_files(data_root):
    sst2 = load_dataset("sst2", data_root, vocab_size=300, max_length=16)
    ag = load_dataset("ag_news", data_root, vocab_size=300, max_length=32)
    ids, mask, labels = sst2.train.tensors
    assert ids.shape == (48, 16) and sst2.num_classes == 2 and len(sst2.val) == 16
    assert (ids[:, 0] == text.BOS_ID).all() and (ids[mask.bool()] != text.PAD_ID).all()
    assert ag.num_classes == 4 and sorted(set(ag.train.tensors[2].tolist())) == [0, 1, 2, 3]
    assert 259 <= sst2.vocab_size <= 300  # 256 bytes + 3 special tokens, then merges


def test_wikitext_is_a_token_stream_in_blocks(data_root):
    splits = load_dataset("wikitext2", data_root, vocab_size=300, max_length=16)
    (blocks,) = splits.train.tensors
    assert blocks.shape[1] == 16 and splits.num_classes == splits.vocab_size
    assert (blocks == text.EOS_ID).any() and not (blocks == text.PAD_ID).any()  # lines end in </s>; no padding


def test_squad_targets_are_the_answer_then_eos(data_root):
    splits = load_dataset("squad", data_root, vocab_size=300, max_length=48, target_length=8)
    sources, _mask, targets = splits.train.tensors
    assert len(sources) == 8 * 3  # 3 questions per paragraph
    assert ((targets == text.EOS_ID).sum(1) == 1).all() and (targets[:, 0] != text.PAD_ID).all()
    with pytest.raises(ValueError, match="target_length"):
        load_dataset("squad", data_root, vocab_size=300, max_length=8, target_length=8)


def test_image_sets_map_labels_from_their_listings(data_root):
    tiny = load_dataset("tinyimagenet", data_root)
    assert tiny.num_classes == 200 and tiny.val.tensors[1].tolist() == [0, 1, 2] * 3  # from val_annotations.txt
    assert tiny.train.tensors[1].bincount().tolist() == [12, 12, 12]
    food = load_dataset("food101", data_root, image_size=24)
    assert food.train.tensors[0].shape == (24, 3, 24, 24)  # any size -> shorter side 24, centre crop
    assert food.val.tensors[1].tolist() == [0] * 4 + [1] * 4


# ---- the tokenizer ------------------------------------------------------------------------


def test_tokenizer_is_trained_once_then_read_from_the_cache(tmp_path, monkeypatch):
    corpus = ["the good film", "a bad movie", "good good music"] * 20
    first = text.cached_tokenizer(corpus, 280, tmp_path)
    assert (tmp_path / "tokenizer-bpe280.json").is_file()
    assert [first.token_to_id(t) for t in text.SPECIAL_TOKENS] == [0, 1, 2]

    def no_training(*args):
        raise AssertionError("the cached tokenizer should have been used")

    monkeypatch.setattr(text, "train_tokenizer", no_training)
    second = text.cached_tokenizer(corpus, 280, tmp_path)
    ids, mask = text.encode(second, ["the good film", "a"], max_length=8)
    assert ids.tolist() == text.encode(first, ["the good film", "a"], max_length=8)[0].tolist()
    assert ids[0, 0] == text.BOS_ID and ids[1, :3].tolist()[::2] == [text.BOS_ID, text.EOS_ID]
    assert mask[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert second.decode(ids[0, 1 : int(mask[0].sum()) - 1].tolist()).strip() == "the good film"


def test_training_the_tokenizer_is_deterministic():
    corpus = [" ".join(np.random.default_rng(i).choice(WORDS, 8)) for i in range(50)]
    a, b = text.train_tokenizer(corpus, 300), text.train_tokenizer(corpus, 300)
    assert a.get_vocab() == b.get_vocab()


# ---- missing data --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, published",
    [
        ("sst2", "SST-2"),
        ("ag_news", "ag_news_csv"),
        ("squad", "train-v1.1.json"),
        ("wikitext2", "wikitext-2-raw"),
        ("wikitext103", "wikitext-103-raw"),
        ("tinyimagenet", "tiny-imagenet-200"),
        ("food101", "food-101"),
    ],
)
def test_missing_data_says_where_it_looked_and_how_to_get_it(name, published, tmp_path):
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset(name, data_dir=tmp_path)
    message = str(caught.value)
    assert f"Data set {name!r} was not found" in message
    assert str(tmp_path / name) in message and published in message
    assert "needs datasets, which is not installed: pip install -e '.[hub]' (in the regimes checkout)" in message
    assert "To get it: download" in message


def test_a_vocabulary_larger_than_the_model_is_refused(data_root, tmp_path):
    config = get_preset("xlnet-sst2")
    config = config.replace(
        model_args=dict(TEXT, num_classes=2, vocab_size=260), data_args=dict(vocab_size=300, max_length=16)
    )
    with pytest.raises(ValueError, match="vocab_size"):
        train_run(config, tmp_path / "run", data_dir=data_root)

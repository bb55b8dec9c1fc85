"""Text data sets: SST-2, AG News, SQuAD v1.1 and WikiText, tokenised with no download.

Each is read from its published files (or from the Hugging Face hub through
``datasets``) and tokenised with a byte-level BPE trained by the ``tokenizers``
library on the training split. The tokenizer is cached next to the data as
``tokenizer-bpe<vocab_size>.json`` and reused. Token ids: ``<pad>`` = 0,
``<s>`` = 1, ``</s>`` = 2 (the ids :mod:`regimes.zoo.hf_text` configures).

Sequences are ``<s> tokens </s>``, cut to ``max_length`` and right-padded; the
attention mask marks real tokens. The same call gives the same tensors.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from regimes.data.registry import Splits, register
from regimes.data.sources import fetch, search_roots
from regimes.errors import DamagedInputError, UsageError
from regimes.extras import require

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


# ---- tokenizer -------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (``tokenizers.Tokenizer``) trained on ``texts``, special tokens first.

    Byte-level: every string encodes, with no unknown token. On a small corpus
    the vocabulary may stop short of ``vocab_size`` (no pair left to merge).
    """
    tokenizers = require("tokenizers", "training a BPE tokenizer")
    byte_level = tokenizers.pre_tokenizers.ByteLevel
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = byte_level(add_prefix_space=True)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=byte_level.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID]
    return tokenizer


def cached_tokenizer(texts: Sequence[str], vocab_size: int, cache_dir: Path | None):
    """The tokenizer saved in ``cache_dir`` for this vocabulary size, else a new one (saved there if writable)."""
    Tokenizer = require("tokenizers", "reading a saved tokenizer").Tokenizer
    path = None if cache_dir is None else Path(cache_dir) / f"tokenizer-bpe{vocab_size}.json"
    if path is not None and path.is_file():
        return Tokenizer.from_file(str(path))
    tokenizer = train_tokenizer(texts, vocab_size)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tokenizer.save(str(path))
        except OSError:  # a read-only data directory: train again next time
            pass
    return tokenizer


def encode(tokenizer, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<s> tokens </s>`` cut to ``max_length`` and right-padded:
    (input_ids, attention_mask), int64 [N, max_length]."""
    if max_length < 3:
        raise UsageError(f"max_length must be >= 3 (<s>, a token, </s>), got {max_length}")
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        tokens = [BOS_ID, *encoding.ids[: max_length - 2], EOS_ID]
        ids[row, : len(tokens)] = tokens
    ids = torch.from_numpy(ids)
    return ids, (ids != PAD_ID).long()


def _cache_dir(source: str, name: str, data_dir) -> Path:
    """Where the tokenizer is kept: the local data folder, else ``<first search root>/<name>``."""
    return Path(source[len("local: ") :]) if source.startswith("local: ") else search_roots(data_dir)[0] / name


def _text_splits(
    name, source, data_dir, train_texts, val_texts, train_labels, val_labels, num_classes, vocab_size, max_length
):
    tokenizer = cached_tokenizer(train_texts, vocab_size, _cache_dir(source, name, data_dir))
    x_train, m_train = encode(tokenizer, train_texts, max_length)
    x_val, m_val = encode(tokenizer, val_texts, max_length)
    y_train, y_val = (torch.as_tensor(np.asarray(y), dtype=torch.int64) for y in (train_labels, val_labels))
    return Splits(
        name,
        TensorDataset(x_train, m_train, y_train),
        TensorDataset(x_val, m_val, y_val),
        (max_length,),
        num_classes,
        source,
        vocab_size=tokenizer.get_vocab_size(),
    )


# ---- SST-2 -------------------------------------------------------------------------------


@register("sst2", "SST-2 sentiment (GLUE TSV or hub), BPE tokens, 2 classes; the dev set is the validation split")
def load_sst2(data_dir=None, split_seed: int = 0, vocab_size: int = 8192, max_length: int = 64):
    (train, val), source = fetch(
        "sst2",
        data_dir,
        folders=("SST-2", "glue/SST-2"),
        required=("train.tsv", "dev.tsv"),
        read_local=lambda d: tuple(_read_sst2_tsv(d / f) for f in ("train.tsv", "dev.tsv")),
        how_to_get=(
            "download SST-2.zip from the GLUE benchmark (https://dl.fbaipublicfiles.com/glue/data/SST-2.zip) "
            "and extract it so that <root>/SST-2/train.tsv exists."
        ),
        hub_id="stanfordnlp/sst2",
        read_hub=lambda hub: tuple((list(hub[s]["sentence"]), list(hub[s]["label"])) for s in ("train", "validation")),
    )
    return _text_splits("sst2", source, data_dir, train[0], val[0], train[1], val[1], 2, vocab_size, max_length)


def _read_sst2_tsv(path: Path) -> tuple[list[str], list[int]]:
    """GLUE's SST-2 TSV: a header ``sentence<TAB>label``, then one sentence per line (no quoting)."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as file:
        header = file.readline().rstrip("\n").split("\t")
        text_col, label_col = header.index("sentence"), header.index("label")
        for line in file:
            fields = line.rstrip("\n").split("\t")
            if len(fields) > max(text_col, label_col):
                texts.append(fields[text_col])
                labels.append(int(fields[label_col]))
    return texts, labels


# ---- AG News -------------------------------------------------------------------------------


@register("ag_news", "AG News topics (CSV or hub), BPE tokens of title and description, 4 classes")
def load_ag_news(data_dir=None, split_seed: int = 0, vocab_size: int = 16384, max_length: int = 128):
    (train, val), source = fetch(
        "ag_news",
        data_dir,
        folders=("ag_news_csv",),
        required=("train.csv", "test.csv"),
        read_local=lambda d: tuple(_read_ag_news_csv(d / f) for f in ("train.csv", "test.csv")),
        how_to_get=(
            "download ag_news_csv.tar.gz (Zhang et al. 2015, e.g. from "
            "https://github.com/mhjabreel/CharCnn_Keras/tree/master/data/ag_news_csv) and extract it "
            "so that <root>/ag_news_csv/train.csv exists."
        ),
        hub_id="fancyzhx/ag_news",
        read_hub=lambda hub: tuple((list(hub[s]["text"]), list(hub[s]["label"])) for s in ("train", "test")),
    )
    return _text_splits("ag_news", source, data_dir, train[0], val[0], train[1], val[1], 4, vocab_size, max_length)


def _read_ag_news_csv(path: Path) -> tuple[list[str], list[int]]:
    """The published CSV: no header; class index 1-4, title, description (``\\`` escapes newlines)."""
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as file:
        for row in csv.reader(file):
            labels.append(int(row[0]) - 1)
            texts.append(" ".join(part.replace("\\n", " ").replace("\\", " ") for part in row[1:]))
    return texts, labels


# ---- SQuAD -----------------------------------------------------------------------------------


@register("squad", "SQuAD v1.1 as text to text (JSON or hub): 'question: ... context: ...' -> the first answer")
def load_squad(
    data_dir=None, split_seed: int = 0, vocab_size: int = 16384, max_length: int = 384, target_length: int = 32
):
    """(input_ids, attention_mask, target_ids): the source is ``question: Q context: C``, cut to
    ``max_length``; the target is the first reference answer then ``</s>``, padded to ``target_length``.
    The dev set is the validation split."""
    if target_length >= max_length:
        # The tracker tells encoder from decoder padding by the masks' lengths.
        raise UsageError(f"target_length ({target_length}) must be shorter than max_length ({max_length})")
    files = ("train-v1.1.json", "dev-v1.1.json")
    (train, val), source = fetch(
        "squad",
        data_dir,
        folders=("SQuAD", "squad1.1"),
        required=files,
        read_local=lambda d: tuple(_read_squad_json(d / f) for f in files),
        how_to_get=(
            "download train-v1.1.json and dev-v1.1.json from https://rajpurkar.github.io/SQuAD-explorer/ "
            "into <root>/squad/."
        ),
        hub_id="rajpurkar/squad",
        read_hub=lambda hub: tuple(_squad_hub(hub[s]) for s in ("train", "validation")),
    )
    (train_sources, train_answers), (val_sources, val_answers) = train, val
    corpus = list(dict.fromkeys(train_sources)) + train_answers
    tokenizer = cached_tokenizer(corpus, vocab_size, _cache_dir(source, "squad", data_dir))
    x_train, m_train = encode(tokenizer, train_sources, max_length)
    x_val, m_val = encode(tokenizer, val_sources, max_length)
    t_train, t_val = (_targets(tokenizer, answers, target_length) for answers in (train_answers, val_answers))
    return Splits(
        "squad",
        TensorDataset(x_train, m_train, t_train),
        TensorDataset(x_val, m_val, t_val),
        (max_length,),
        tokenizer.get_vocab_size(),
        source,
        vocab_size=tokenizer.get_vocab_size(),
    )


def _read_squad_json(path: Path) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8") as file:
        articles = json.load(file)["data"]
    sources, answers = [], []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa["answers"]:
                    sources.append(_squad_source(qa["question"], paragraph["context"]))
                    answers.append(qa["answers"][0]["text"])
    return sources, answers


def _squad_hub(table) -> tuple[list[str], list[str]]:
    rows = zip(table["question"], table["context"], table["answers"])
    pairs = [(_squad_source(q, c), a["text"][0]) for q, c, a in rows if a["text"]]
    return [s for s, _ in pairs], [a for _, a in pairs]


def _squad_source(question: str, context: str) -> str:
    return f"question: {question.strip()} context: {context.strip()}"


def _targets(tokenizer, answers: Sequence[str], length: int) -> torch.Tensor:
    """Answer tokens then ``</s>`` (no ``<s>``: the decoder starts from ``<pad>``), padded: int64 [N, length]."""
    ids = np.full((len(answers), length), PAD_ID, dtype=np.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(list(answers), add_special_tokens=False)):
        tokens = [*encoding.ids[: length - 1], EOS_ID]
        ids[row, : len(tokens)] = tokens
    return torch.from_numpy(ids)


# ---- WikiText ----------------------------------------------------------------------------------


def _load_wikitext(variant: str, data_dir, vocab_size: int, block_size: int) -> Splits:
    """One token stream per split (each non-empty line then ``</s>``), cut into blocks of ``block_size``."""
    name = f"wikitext{variant}"
    folder = f"wikitext-{variant}-raw"
    files = ("wiki.train.raw", "wiki.valid.raw")
    (train, val), source = fetch(
        name,
        data_dir,
        folders=(folder, f"{folder}-v1"),
        required=files,
        read_local=lambda d: tuple(_lines((d / f).read_text(encoding="utf-8").splitlines()) for f in files),
        how_to_get=(
            f"download {folder}-v1.zip (the raw character-level WikiText-{variant}, e.g. from "
            "https://huggingface.co/datasets/Salesforce/wikitext) and extract it so that "
            f"<root>/{folder}/wiki.train.raw exists."
        ),
        hub_id="Salesforce/wikitext",
        hub_config=f"wikitext-{variant}-raw-v1",
        read_hub=lambda hub: tuple(_lines(hub[s]["text"]) for s in ("train", "validation")),
    )
    tokenizer = cached_tokenizer(train, vocab_size, _cache_dir(source, name, data_dir))
    blocks = [_blocks(tokenizer, lines, block_size) for lines in (train, val)]
    return Splits(
        name,
        TensorDataset(blocks[0]),
        TensorDataset(blocks[1]),
        (block_size,),
        tokenizer.get_vocab_size(),
        source,
        vocab_size=tokenizer.get_vocab_size(),
    )


def _lines(lines: Iterable[str]) -> list[str]:
    return [line.strip() for line in lines if line.strip()]


def _blocks(tokenizer, lines: list[str], block_size: int) -> torch.Tensor:
    stream = []
    for encoding in tokenizer.encode_batch(lines, add_special_tokens=False):
        stream.extend(encoding.ids)
        stream.append(EOS_ID)
    n = len(stream) // block_size
    if n == 0:
        raise UsageError(f"the split has {len(stream)} tokens, fewer than one block of {block_size}")
    return torch.tensor(stream[: n * block_size], dtype=torch.int64).view(n, block_size)  # the rest is dropped


@register("wikitext2", "WikiText-2 raw (files or hub), BPE token stream in blocks, for causal language modelling")
def load_wikitext2(data_dir=None, split_seed: int = 0, vocab_size: int = 16384, max_length: int = 512):
    return _load_wikitext("2", data_dir, vocab_size, max_length)


@register("wikitext103", "WikiText-103 raw (files or hub), BPE token stream in blocks, for causal language modelling")
def load_wikitext103(data_dir=None, split_seed: int = 0, vocab_size: int = 16384, max_length: int = 512):
    return _load_wikitext("103", data_dir, vocab_size, max_length)


# ---- The Jargon File (English prose that a Debian package ships) -------------------------------

# Where Debian's jargon-text package puts the Jargon File 4.4.7 (public domain, 1.7 MB of text).
DEBIAN_JARGON = "/usr/share/doc/jargon-text"
JARGON_VAL_FRACTION = 0.1


@register(
    "jargon-file",
    "The Jargon File 4.4.7 (English prose, public domain; Debian's jargon-text), BPE token stream in blocks, "
    "for causal language modelling",
)
def load_jargon_file(
    data_dir=None,
    split_seed: int = 0,
    vocab_size: int = 4096,
    max_length: int = 128,
    train_chars: int | None = None,
    val_chars: int | None = None,
):
    """The Jargon File as a language-modelling corpus, read offline from ``jargon.txt`` (or
    ``jargon.txt.gz``, as `apt-get install jargon-text` installs it).

    The text is cut into paragraphs (blank lines), each made one line; 10% of them, drawn with
    ``split_seed``, are the validation split. ``train_chars`` / ``val_chars`` keep only the
    first paragraphs of a split up to that many characters (None: all), so that a CPU run fits.
    The BPE is trained on the kept training text each time (about a second), never cached,
    since it depends on the cut. Then as WikiText: ``</s>`` after each paragraph, blocks of
    ``max_length`` tokens.
    """
    paragraphs, source = fetch(
        "jargon-file",
        data_dir,
        folders=("jargon-text", "jargon"),
        required=("jargon.txt",),
        read_local=lambda d: read_paragraphs(d / "jargon.txt"),
        how_to_get=(
            f"apt-get install jargon-text (Debian/Ubuntu: the file lands in {DEBIAN_JARGON}), or put the "
            "Jargon File's plain text (jargon.txt, http://www.catb.org/jargon/) into <root>/jargon-file/."
        ),
        system_dirs=(DEBIAN_JARGON,),
    )
    val_mask = np.random.default_rng(split_seed).random(len(paragraphs)) < JARGON_VAL_FRACTION
    train = _first_chars([p for p, v in zip(paragraphs, val_mask) if not v], train_chars)
    val = _first_chars([p for p, v in zip(paragraphs, val_mask) if v], val_chars)
    if not train or not val:
        raise UsageError(
            f"{source}: too little text for a training and a validation split ({len(paragraphs)} paragraphs)"
        )
    tokenizer = cached_tokenizer(train, vocab_size, None)
    blocks = [_blocks(tokenizer, lines, max_length) for lines in (train, val)]
    return Splits(
        "jargon-file",
        TensorDataset(blocks[0]),
        TensorDataset(blocks[1]),
        (max_length,),
        tokenizer.get_vocab_size(),
        source,
        vocab_size=tokenizer.get_vocab_size(),
    )


def read_paragraphs(path: Path) -> list[str]:
    """A plain-text file (``path`` or ``path.gz``, UTF-8) as paragraphs: blank-line separated,
    each one line with its whitespace collapsed. A file that is not gzip or not UTF-8 text is a
    ValueError naming it."""
    if not path.is_file():
        path = path.with_name(path.name + ".gz")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as file:
                text = file.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile) as error:
        raise DamagedInputError(f"{path}: not readable as UTF-8 text ({error})") from None
    paragraphs = [" ".join(block.split()) for block in text.split("\n\n")]
    return [p for p in paragraphs if p]


def _first_chars(paragraphs: list[str], limit: int | None) -> list[str]:
    """The leading paragraphs whose total length stays within ``limit`` characters (None: all)."""
    if limit is None:
        return paragraphs
    kept, total = [], 0
    for paragraph in paragraphs:
        total += len(paragraph)
        if total > limit:
            break
        kept.append(paragraph)
    return kept

"""Tiny Hugging Face checkpoints and text/code data sets in their real on-disk formats (GLUE TSVs, PTB and
WikiText files, CodeXGLUE's Devign and BigCloneBench).

A checkpoint directory is what ``save_pretrained`` writes for a hub model: a tokenizer of the real
class (trained in a second on fixture text with the ``tokenizers`` or ``sentencepiece`` library,
with the real special-token ids), a config of the real architecture at a tiny size, and weights.
``backbone.pretrained=<dir>`` then loads them through the same ``from_pretrained`` calls as a hub name.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import transformers as tf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

HEADS = 4
LAYERS = 2
TINY = {"hidden": 32, "ffn": 64, "positions": 64}

# fmt: off
WORDS = ["the", "a", "cat", "dog", "bird", "sat", "ran", "flew", "on", "under", "over", "mat", "tree", "house", "good",
         "bad", "great", "awful", "movie", "film", "plot", "actor", "very", "not", "really", "quite", "fun", "boring",
         "long", "short", "is", "was", "were", "be", "it", "this", "that", "and", "but", "or", "with", "from"]
CODE_WORDS = ["int", "char", "void", "return", "if", "else", "while", "for", "static", "const", "struct", "buf", "len",
              "ptr", "size", "NULL", "free", "malloc"]
# fmt: on


def sentences(n: int, seed: int = 0, words=WORDS) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def functions(n: int, seed: int = 0) -> list[str]:
    """C-like functions with newlines and indentation (whitespace that the readers collapse)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        body = "\n    ".join(
            f"{rng.choice(CODE_WORDS)} {rng.choice(CODE_WORDS)} = {rng.choice(CODE_WORDS)}({rng.randint(0, 9)});"
            for _ in range(rng.randint(2, 6))
        )
        out.append(f"static int f{i}(char *buf, int len)\n{{\n    {body}\n    return len;\n}}")
    return out


# --------------------------------------------------------------------------------------------------
# tokenizers of the real classes


def _bpe(texts, special: list[str]) -> tuple[dict, list]:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def bert_tokenizer(texts):
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(
        texts,
        trainers.WordPieceTrainer(
            vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
        ),
    )
    return tf.BertTokenizer(vocab=wp.get_vocab())


def albert_tokenizer(texts):
    # ALBERT's ids: <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4 (AlbertTokenizer assumes unk_id=1).
    ug = Tokenizer(models.Unigram())
    ug.pre_tokenizer = pre_tokenizers.Metaspace()
    special = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    ug.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=200, special_tokens=special, unk_token="<unk>", show_progress=False)
    )
    return tf.AlbertTokenizer(vocab=[tuple(v) for v in json.loads(ug.to_str())["model"]["vocab"]])


def roberta_tokenizer(texts, special=("<s>", "<pad>", "</s>", "<unk>", "<mask>")):
    vocab, merges = _bpe(texts, list(special))
    return tf.RobertaTokenizer(vocab=vocab, merges=merges)


def gpt2_tokenizer(texts):
    vocab, merges = _bpe(texts, ["<|endoftext|>"])
    return tf.GPT2Tokenizer(vocab=vocab, merges=merges)


def plbart_tokenizer(texts, directory: Path):
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=120,
        model_type="unigram",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = directory / "sp.model"
    path.write_bytes(buf.getvalue())
    return tf.PLBartTokenizer(vocab_file=str(path), language_codes="base")


# --------------------------------------------------------------------------------------------------
# checkpoints


def _config(kind: str, tok) -> tuple[object, type]:
    h, f, p = TINY["hidden"], TINY["ffn"], TINY["positions"]
    v = len(tok)
    encoder = {
        "vocab_size": v,
        "hidden_size": h,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": f,
    }
    if kind == "bert":
        return tf.BertConfig(**encoder, max_position_embeddings=p, pad_token_id=0), tf.BertModel
    if kind == "albert":
        shared = {"embedding_size": 16, "num_hidden_groups": 1}
        albert = tf.AlbertConfig(
            **encoder, **shared, max_position_embeddings=p, pad_token_id=0, bos_token_id=2, eos_token_id=3
        )
        return albert, tf.AlbertModel
    if kind in ("roberta", "codebert"):
        roberta = tf.RobertaConfig(
            **encoder, max_position_embeddings=p + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2
        )
        return roberta, tf.RobertaModel
    if kind == "gpt2":
        eos = tok.eos_token_id
        return tf.GPT2Config(
            vocab_size=v, n_embd=h, n_layer=LAYERS, n_head=HEADS, n_positions=p, bos_token_id=eos, eos_token_id=eos
        ), tf.GPT2LMHeadModel
    if kind == "plbart":
        return tf.PLBartConfig(
            vocab_size=v,
            d_model=h,
            encoder_layers=LAYERS,
            decoder_layers=LAYERS,
            encoder_attention_heads=HEADS,
            decoder_attention_heads=HEADS,
            encoder_ffn_dim=f,
            decoder_ffn_dim=f,
            max_position_embeddings=p,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ), tf.PLBartForConditionalGeneration
    if kind == "codet5":
        return tf.T5Config(
            vocab_size=v,
            d_model=h,
            d_kv=h // HEADS,
            d_ff=f,
            num_layers=LAYERS,
            num_decoder_layers=LAYERS,
            num_heads=HEADS,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=0,
        ), tf.T5ForConditionalGeneration
    raise ValueError(kind)


def build_checkpoint(kind: str, directory: Path, texts: list[str]) -> Path:
    """A tiny checkpoint of ``kind`` (bert, albert, roberta, codebert, gpt2, plbart, codet5) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        tok = bert_tokenizer(texts)
    elif kind == "albert":
        tok = albert_tokenizer(texts)
    elif kind in ("roberta", "codebert"):
        tok = roberta_tokenizer(texts)
    elif kind == "gpt2":
        tok = gpt2_tokenizer(texts)
    elif kind == "plbart":
        tok = plbart_tokenizer(texts, directory)
    elif kind == "codet5":  # CodeT5 ships a RoBERTa BPE tokenizer with <pad>=0, <s>=1, </s>=2
        tok = roberta_tokenizer(texts, special=("<pad>", "<s>", "</s>", "<unk>", "<mask>"))
    else:
        raise ValueError(kind)
    config, cls = _config(kind, tok)
    tok.save_pretrained(directory)
    cls(config).save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------------
# datasets in the official layouts

LM_SPLITS = (("train", 1), ("valid", 2), ("test", 3))  # (split, seed)


def write_ptb(root: Path, n: int = 60) -> Path:
    """Mikolov's PTB files ``ptb.{train,valid,test}.txt``: one sentence per line."""
    root.mkdir(parents=True, exist_ok=True)
    for split, seed in LM_SPLITS:
        (root / f"ptb.{split}.txt").write_text("".join(f" {s} \n" for s in sentences(n, seed)), encoding="utf-8")
    return root


def write_wikitext(root: Path, ext: str = "raw", n: int = 40) -> Path:
    """An unzipped WikiText folder: ``wiki.{train,valid,test}.{ext}`` (raw, or tokens for WikiText-103),
    articles under `` = Title = `` headings with blank lines between paragraphs."""
    root.mkdir(parents=True, exist_ok=True)
    for split, seed in LM_SPLITS:
        body = "".join(f" = Article {i} = \n \n {s} . \n \n" for i, s in enumerate(sentences(n, seed + 3)))
        (root / f"wiki.{split}.{ext}").write_text(body, encoding="utf-8")
    return root


def write_tsv(path: Path, rows: list[list], header: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(c) for c in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


MNLI_LABELS = ("entailment", "neutral", "contradiction")
NLI_LABELS = ("entailment", "not_entailment")
MNLI_HEAD = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
]


def glue_rows(task: str, split: str, n: int, seed: int) -> tuple[list[str] | None, list[list]]:
    """(header, rows) of one GLUE TSV in the official column layout."""
    rng = random.Random(seed)
    a, b = sentences(n, seed), sentences(n, seed + 1000)
    if task == "CoLA":  # no header: source, label, original judgement, sentence
        return None, [[f"gj0{i % 5}", (y := rng.randint(0, 1)), "" if y else "*", s] for i, s in enumerate(a)]
    if task == "SST-2":
        return ["sentence", "label"], [[s, rng.randint(0, 1)] for s in a]
    if task == "MRPC":
        return ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [
            [rng.randint(0, 1), 1000 + i, 2000 + i, x, y] for i, (x, y) in enumerate(zip(a, b))
        ]
    if task == "QQP":
        return ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], [
            [i, 2 * i, 2 * i + 1, x + " ?", y + " ?", rng.randint(0, 1)] for i, (x, y) in enumerate(zip(a, b))
        ]
    if task == "STS-B":
        head = [
            "index",
            "genre",
            "filename",
            "year",
            "old_index",
            "source1",
            "source2",
            "sentence1",
            "sentence2",
            "score",
        ]
        return head, [
            [i, "main-news", "2012", "2012", i, "none", "none", x, y, f"{rng.uniform(0, 5):.3f}"]
            for i, (x, y) in enumerate(zip(a, b))
        ]
    if task == "MNLI":
        labels = ["label1"] if split == "train" else ["label1", "label2", "label3", "label4", "label5"]
        rows = []
        for i, (x, y) in enumerate(zip(a, b)):
            gold = rng.choice(MNLI_LABELS)
            rows.append(
                [
                    i,
                    100 + i,
                    f"{100 + i}e",
                    "fiction",
                    f"( {x} )",
                    f"( {y} )",
                    f"(ROOT {x})",
                    f"(ROOT {y})",
                    x,
                    y,
                    *[gold] * len(labels),
                    gold,
                ]
            )
        return [*MNLI_HEAD, *labels, "gold_label"], rows
    if task == "QNLI":
        return ["index", "question", "sentence", "label"], [
            [i, x + " ?", y, rng.choice(NLI_LABELS)] for i, (x, y) in enumerate(zip(a, b))
        ]
    if task == "RTE":
        return ["index", "sentence1", "sentence2", "label"], [
            [i, x, y, rng.choice(NLI_LABELS)] for i, (x, y) in enumerate(zip(a, b))
        ]
    raise ValueError(task)


GLUE_FOLDERS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "qqp": "QQP",
    "stsb": "STS-B",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
}


def write_glue(root: Path, n_train: int = 24, n_dev: int = 12) -> Path:
    """Every GLUE task's train and dev TSVs under ``root/<Folder>/``."""
    for i, folder in enumerate(GLUE_FOLDERS.values()):
        dev_files = ["dev_matched.tsv", "dev_mismatched.tsv"] if folder == "MNLI" else ["dev.tsv"]
        head, rows = glue_rows(folder, "train", n_train, seed=10 * i)
        write_tsv(root / folder / "train.tsv", rows, head)
        for j, name in enumerate(dev_files):
            head, rows = glue_rows(folder, "dev", n_dev, seed=10 * i + 1 + j)
            write_tsv(root / folder / name, rows, head)
    return root


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_devign(root: Path, n_train: int = 24, n_eval: int = 12) -> Path:
    rng = random.Random(7)
    for split, n, seed in (("train", n_train, 0), ("valid", n_eval, 1), ("test", n_eval, 2)):
        write_jsonl(
            root / f"{split}.jsonl",
            [
                {
                    "project": "qemu",
                    "commit_id": f"{seed}{i:05x}",
                    "target": rng.randint(0, 1),
                    "func": f,
                    "idx": 1000 * seed + i,
                }
                for i, f in enumerate(functions(n, seed))
            ],
        )
    return root


def write_bigclonebench(root: Path, n_funcs: int = 16, n_pairs: int = 24) -> Path:
    rng = random.Random(11)
    ids = [str(13988825 + 7919 * i) for i in range(n_funcs)]
    write_jsonl(root / "data.jsonl", [{"func": f, "idx": i} for f, i in zip(functions(n_funcs, 3), ids)])
    for split, n in (("train", n_pairs), ("valid", n_pairs), ("test", n_pairs // 2)):
        lines = [f"{rng.choice(ids)}\t{rng.choice(ids)}\t{rng.randint(0, 1)}" for _ in range(n)]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root

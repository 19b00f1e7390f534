"""A diffusers folder's `tokenizer/`: transformers' CLIPTokenizer files, read and written.

The folder holds `vocab.json` ({piece: id}), `merges.txt` (the BPE merges, one
"left right" per line after a "#version" header), `special_tokens_map.json` and
`tokenizer_config.json`. They are CLIP's BPE vocabulary in another dress: the
merges are the first lines of `bpe_simple_vocab_16e6.txt.gz`, and the ids are
CLIP's (bytes, their end-of-word forms, merges, start, end). So the folder drives
`ClipTokenizer` to the same ids (tests/test_formats_encoders.py checks it against
transformers' CLIPTokenizer, whose ids the fixture script recorded).

What differs between models is the pad token: SD 1.x pads with `<|endoftext|>`
(49407), SD 2.x's tokenizer with `!` (id 0), as OpenCLIP's tokenizer pads with 0.
"""

import json
import os
import tempfile

from absl import logging

from dbdist.errors import MissingInputError, UserError
from dbdist.text.tokenizer import (END_OF_WORD, END_TEXT, START_TEXT, ClipTokenizer, byte_alphabet, parse_merges,
                                   read_merges, resolve_vocab_path)
from dbdist.weights import remote_files

VOCAB_JSON, MERGES_TXT = "vocab.json", "merges.txt"
SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG = "special_tokens_map.json", "tokenizer_config.json"
# transformers writes this header; its CLIPTokenizer skips line 0 whatever it says.
MERGES_HEADER = "#version: 0.2"
# The pad token of each Stable Diffusion family's tokenizer/ folder.
SD1_PAD_TOKEN, SD2_PAD_TOKEN = END_TEXT, "!"


def _read_text(path):
    with remote_files.local_copy(path) as local:
        with open(local, encoding="utf-8") as f:
            return f.read()


def _token_content(value):
    """'<|endoftext|>' from either a plain string or transformers' AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _pad_token(folder):
    """The pad token string named by the folder's json files, or None if neither names one."""
    for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
        path = os.path.join(folder, name)
        if remote_files.exists(path):
            pad = _token_content(json.loads(_read_text(path)).get("pad_token"))
            if pad:
                return pad
    return None


def load_tokenizer_folder(folder):
    """A ClipTokenizer from a tokenizer folder (local or gs://), padding as the folder says.

    Raises UserError naming the file when a file is missing or is not CLIP's vocabulary.
    """
    paths = {name: os.path.join(folder, name) for name in (VOCAB_JSON, MERGES_TXT)}
    for name, path in paths.items():
        if not remote_files.exists(path):
            raise MissingInputError(f"tokenizer folder {folder} has no {name}; expected transformers' CLIPTokenizer "
                             f"files {VOCAB_JSON} and {MERGES_TXT}")
    merges = parse_merges(_read_text(paths[MERGES_TXT]), paths[MERGES_TXT])
    try:
        ids = json.loads(_read_text(paths[VOCAB_JSON]))
    except json.JSONDecodeError as err:
        raise UserError(f"{paths[VOCAB_JSON]} is not JSON ({err}); expected CLIPTokenizer's {{piece: id}}") from err
    _check_vocab(ids, merges, paths[VOCAB_JSON])
    pad = _pad_token(folder) or END_TEXT
    if pad not in ids:
        raise UserError(f"{folder}: pad token {pad!r} is not in {VOCAB_JSON}")
    return ClipTokenizer.from_merges(merges, ids, pad_token=ids[pad])


def command_tokenizer(vocab_path, weights):
    """The tokenizer every command encodes prompts with: --vocab_path if given, else the tokenizer/
    of a diffusers --weights folder (the model's own), else keras-cv's CLIP file (downloaded once)."""
    from dbdist.formats.diffusers_folder import is_diffusers_folder

    folder = os.path.join(str(weights), "tokenizer") if weights else ""
    if not vocab_path and folder and is_diffusers_folder(weights) and remote_files.exists(
            os.path.join(folder, VOCAB_JSON)):
        logging.info("tokenizer: %s", folder)
        return load_tokenizer_folder(folder)
    return ClipTokenizer(resolve_vocab_path(vocab_path))


def _check_vocab(ids, merges, path):
    """Every piece BPE can produce must have an id, or encoding would fail on some prompt."""
    alphabet = list(byte_alphabet().values())
    needed = [*alphabet, *(c + END_OF_WORD for c in alphabet), *("".join(m) for m in merges), START_TEXT, END_TEXT]
    missing = [piece for piece in needed if piece not in ids]
    if missing:
        raise UserError(f"{path} lacks {len(missing)} of the pieces its merges make, the first {missing[0]!r}; "
                         "expected the CLIP vocabulary that goes with merges.txt")


def clip_vocabulary(vocab_path):
    """(vocab {piece: id}, merges) as transformers' CLIP files hold them, from the gz BPE file."""
    merges = read_merges(vocab_path)
    alphabet = list(byte_alphabet().values())
    pieces = alphabet + [c + END_OF_WORD for c in alphabet] + ["".join(m) for m in merges] + [START_TEXT, END_TEXT]
    return {piece: i for i, piece in enumerate(pieces)}, merges


def tokenizer_folder_files(vocab_path, pad_token=SD1_PAD_TOKEN, max_length=77):
    """{file name: text} of a tokenizer/ folder that transformers' CLIPTokenizer.from_pretrained reads."""
    vocab, merges = clip_vocabulary(vocab_path)
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the CLIP vocabulary")
    specials = {"bos_token": START_TEXT, "eos_token": END_TEXT, "unk_token": END_TEXT, "pad_token": pad_token}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, **specials}
    return {
        VOCAB_JSON: json.dumps(vocab, ensure_ascii=False),
        MERGES_TXT: "\n".join([MERGES_HEADER, *(" ".join(m) for m in merges)]) + "\n",
        SPECIAL_TOKENS_MAP: json.dumps(specials, indent=2),
        TOKENIZER_CONFIG: json.dumps(config, indent=2),
    }


def write_tokenizer_folder(folder, vocab_path, pad_token=SD1_PAD_TOKEN, max_length=77):
    """Writes a diffusers pipeline's tokenizer/ folder (local or gs://), each file whole or not at all."""
    for name, text in tokenizer_folder_files(vocab_path, pad_token, max_length).items():
        fd, tmp = tempfile.mkstemp(suffix=f"-{name}")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            remote_files.move_into_place(tmp, os.path.join(folder, name))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

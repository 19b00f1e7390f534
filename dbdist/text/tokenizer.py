"""CLIP's byte-level BPE tokenizer, as Stable Diffusion's text encoders expect it.

Written for dbdist rather than imported from keras-cv so that tokenizing (done in
the input pipeline and in tests) needs neither TensorFlow nor keras-cv. Text is
cleaned as OpenAI CLIP's own tokenizer cleans it (ftfy, HTML unescape, whitespace),
which the text encoders were trained on; keras-cv 0.9.0's `SimpleTokenizer` skips
ftfy, so our ids equal keras-cv's on the ftfy-fixed text, id for id.
tests/test_tokenizer.py checks both.
"""

import gzip
import hashlib
import html
import os

import ftfy
import numpy as np
import regex

from dbdist.errors import MissingInputError, UserError

VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_URL = "https://github.com/openai/CLIP/blob/main/clip/bpe_simple_vocab_16e6.txt.gz?raw=true"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# CLIP keeps the first 49152 - 256 - 2 merges of the file, so that 256 bytes, their
# 256 end-of-word forms, the merges and two special tokens make 49408 ids.
NUM_MERGES = 49152 - 256 - 2
START_TEXT, END_TEXT = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"

# Specials first so a literal "<|endoftext|>" in a prompt stays one token; then
# common English contractions, runs of letters, single digits, runs of other symbols.
_WORD_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


class PromptTooLongError(UserError):
    """A prompt needs more tokens than the text encoder's sequence length."""

    def __init__(self, prompt, num_tokens, max_length):
        shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
        super().__init__(
            f"Prompt {shown!r} encodes to {num_tokens} tokens (start and end tokens "
            f"included), more than the maximum of {max_length}; shorten it.")
        self.prompt, self.num_tokens, self.max_length = prompt, num_tokens, max_length


def clean_text(text):
    r"""The text CLIP tokenizes: OpenAI CLIP's `whitespace_clean(basic_clean(text)).lower()`.

    From github.com/openai/CLIP, clip/simple_tokenizer.py:
        basic_clean: ftfy.fix_text(text); html.unescape(html.unescape(text)); .strip()
        whitespace_clean: re.sub(r'\s+', ' ', text).strip()
    ftfy.fix_text uncurls quotes (dog\u2019s -> dog's), splits ligatures, narrows full-width
    letters, repairs mojibake and normalises to NFC (a decomposed "cafe\u0301" becomes "caf\u00e9"),
    so text that reads the same encodes to the same ids, as in CLIP's training.
    HTML is unescaped twice because captions scraped from the web are often double-escaped.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def byte_alphabet():
    """Maps each byte 0..255 to a printable character, so BPE sees no raw bytes.

    Bytes that already print as a visible Latin-1 character map to themselves;
    the rest (controls, space, a few others) go in order to chr(256), chr(257), ...
    This is CLIP's table; the vocabulary file is written in these characters.
    The dict's order matters: ids 0..255 are its values in insertion order,
    visible bytes first, then the remapped ones.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in visible}
    hidden = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(hidden)})
    return table


class ClipTokenizer:
    """Encodes prompts to CLIP token ids (vocabulary 49408, start 49406, end 49407).

    Built from the gzipped BPE file (`ClipTokenizer(vocab_path)`) or from a
    tokenizer folder's `vocab.json` + `merges.txt` (`ClipTokenizer.from_merges`,
    see dbdist/formats/tokenizer_files.py): the same merges give the same ids.
    Prompts are padded with `pad_token` (default: the end token, as keras-cv pads).
    """

    def __init__(self, vocab_path, pad_token=None):
        self._setup(read_merges(vocab_path), ids=None, pad_token=pad_token)

    @classmethod
    def from_merges(cls, merges, ids=None, pad_token=None):
        """A tokenizer from merge pairs in rank order and, optionally, a vocab.json {piece: id}.

        Without `ids`, ids follow CLIP's construction: the 256 byte characters, their
        end-of-word forms, one per merge, then the start and end tokens.
        """
        tokenizer = cls.__new__(cls)
        tokenizer._setup(list(merges), ids, pad_token)
        return tokenizer

    def _setup(self, merges, ids, pad_token):
        self._byte_char = byte_alphabet()
        if ids is None:
            alphabet = list(self._byte_char.values())
            vocab = alphabet + [c + END_OF_WORD for c in alphabet]
            vocab += ["".join(pair) for pair in merges] + [START_TEXT, END_TEXT]
            # Later duplicates win, as in CLIP's dict(zip(vocab, range(...))).
            ids = {piece: i for i, piece in enumerate(vocab)}
        self._ids = dict(ids)
        self._rank = {pair: i for i, pair in enumerate(merges)}
        # Prompts reuse few words, so memoise each word's BPE split (CLIP does too).
        # Specials are pre-seeded: they must not gain an end-of-word marker.
        self._cache = {START_TEXT: (START_TEXT,), END_TEXT: (END_TEXT,)}
        self.pad_token = self.end_token if pad_token is None else int(pad_token)

    @property
    def start_token(self):
        return self._ids[START_TEXT]

    @property
    def end_token(self):
        return self._ids[END_TEXT]

    def _bpe(self, word):
        """Splits one byte-mapped word into vocabulary pieces."""
        pieces = self._cache.get(word)
        if pieces is not None:
            return pieces
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            # Apply the earliest-learned merge present, to all of its
            # non-overlapping occurrences left to right, then look again.
            ranked = [(self._rank[p], p) for p in zip(symbols, symbols[1:])
                      if p in self._rank]
            if not ranked:
                break
            first, second = min(ranked)[1]
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        pieces = tuple(symbols)
        self._cache[word] = pieces
        return pieces

    def encode(self, text):
        """Returns [start] + BPE ids + [end] of the cleaned text (see `clean_text`)."""
        ids = [self.start_token]
        for word in _WORD_PATTERN.findall(clean_text(text)):
            mapped = "".join(self._byte_char[b] for b in word.encode("utf-8"))
            ids.extend(self._ids[piece] for piece in self._bpe(mapped))
        ids.append(self.end_token)
        return ids

    def tokenize(self, prompt, max_length=77, pad_token_id=None):
        """Encodes and pads to (max_length,) int32 with `pad_token_id`: the model's own tokenizer's
        (TextEncoderConfig.pad_token_id: SD 1.x's CLIP pads with the end token, as keras-cv's
        StableDiffusion.encode_text does; SD 2.x's OpenCLIP with 0). None: this tokenizer's own
        `pad_token` (the end token unless a tokenizer folder says otherwise).
        Raises PromptTooLongError instead of cutting, since a silently truncated prompt trains
        on a caption nobody wrote."""
        ids = self.encode(prompt)
        if len(ids) > max_length:
            raise PromptTooLongError(prompt, len(ids), max_length)
        padded = np.full((max_length,), self.pad_token if pad_token_id is None else pad_token_id, dtype=np.int32)
        padded[:len(ids)] = ids
        return padded

    def tokenize_batch(self, prompts, max_length=77, pad_token_id=None):
        """Tokenizes each prompt; returns int32 (len(prompts), max_length)."""
        out = np.empty((len(prompts), max_length), dtype=np.int32)
        for row, prompt in enumerate(prompts):
            out[row] = self.tokenize(prompt, max_length, pad_token_id)
        return out


def _missing(path):
    return MissingInputError(
        f"Vocabulary file {path} does not exist; expected the CLIP BPE "
        f"vocabulary {VOCAB_FILENAME} (pass --vocab_path).")


def read_merges(path):
    """Reads the merge pairs from a gzipped CLIP BPE file, or raises ValueError."""
    if not os.path.isfile(path):
        raise _missing(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not a readable gzip text file ({e}); expected the CLIP BPE "
            f"vocabulary {VOCAB_FILENAME}.") from e
    return parse_merges(text, path)


def parse_merges(text, path):
    """Merge pairs of a CLIP BPE merges text (the gz file's, or a tokenizer folder's merges.txt).

    Line 0 is a "#version" header; each following line is "left right". CLIP and
    transformers' CLIPTokenizer both keep the first NUM_MERGES of them.
    """
    merges = [tuple(line.split()) for line in text.split("\n")[1:NUM_MERGES + 1]]
    if len(merges) < NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(
            f"{path} is not a CLIP BPE merges file: expected a header line and at least "
            f"{NUM_MERGES} lines of two symbols each ({VOCAB_FILENAME} or a tokenizer's merges.txt).")
    return merges


def resolve_vocab_path(vocab_path=None):
    """Returns a local path to the CLIP BPE vocabulary.

    None or "" downloads (and caches) the file keras-cv uses; "scheme://..." (e.g.
    gs://) is copied to a local cache once, and refused unless it is that same file
    (SHA-256); anything else must be an existing file.
    """
    if not vocab_path:
        import keras  # Lazy: only the download needs it.
        return keras.utils.get_file(VOCAB_FILENAME, VOCAB_URL, file_hash=VOCAB_SHA256)
    if "://" in vocab_path:
        return _copy_remote(vocab_path)
    local = os.path.expanduser(vocab_path)
    if not os.path.isfile(local):
        raise _missing(vocab_path)
    return local


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()  # 1.3 MB: one read is fine


def _copy_remote(url):
    import tensorflow as tf  # Lazy: only remote paths need gfile.

    # Keyed by URL so different remote files never share a cache entry; the hash is
    # checked on every use, so neither a wrong remote file nor a damaged or
    # older cache entry is tokenized with.
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "dbdist")
    local = os.path.join(cache_dir, f"{key}-{os.path.basename(url)}")
    if os.path.isfile(local) and _sha256(local) == VOCAB_SHA256:
        return local
    if not tf.io.gfile.exists(url):
        raise _missing(url)
    os.makedirs(cache_dir, exist_ok=True)
    # Temp name + rename so a crash or a concurrent worker never leaves half a file.
    tmp = f"{local}.tmp{os.getpid()}"
    tf.io.gfile.copy(url, tmp, overwrite=True)
    got = _sha256(tmp)
    if got != VOCAB_SHA256:
        os.remove(tmp)
        raise ValueError(
            f"--vocab_path {url} has SHA-256 {got}, expected {VOCAB_SHA256} "
            f"(CLIP's {VOCAB_FILENAME}, which every Stable Diffusion text encoder was trained with)")
    os.replace(tmp, local)
    return local

"""T5's span corruption over token ids, as seqio preprocessors (pure TF ops, inside tf.data).

The objective of T5 (Raffel et al., 2020, section 3.1.4), with its defaults: 15% of the tokens
are noise (`noise_density` 0.15), in spans of mean length 3 (`mean_noise_span_length`). For a
sequence of `length` tokens:

- noise tokens: round(length * noise_density), at least 1 and at most length - 1;
- noise spans: round(noise tokens / mean_noise_span_length), at least 1;
- the noise tokens are cut into that many non-empty spans at random, the other tokens into as
  many non-empty spans, and the spans alternate, starting with non-noise (so a sequence always
  ends in noise), as T5's `random_spans_noise_mask` draws them;
- the inputs keep the non-noise tokens and put one sentinel in place of each noise span; the
  targets are each sentinel followed by the span it replaced. Sentinels are the vocabulary's
  extra ids from the top down: the first is `vocab_size - 1` (`<extra_id_0>`), the next
  `vocab_size - 2`, and so on (seqio's SentencePieceVocabulary puts its 100 extra ids on top of
  the model's pieces, and `vocab_size` counts them).
The counts are rounded in float64 (T5's mask rounds in float32, which at a few lengths, such as
70 tokens where 10.5 noise tokens round up, disagrees with its own length rule below and makes
the targets 2 tokens longer than that rule allows for); otherwise the mask is drawn as T5's is.

`input_and_target_lengths` is T5's `random_spans_helper` rule: the longest raw token sequence
whose corrupted inputs, with EOS, fit `inputs_length`, and the targets length that follows
(inputs 512 -> 568 raw tokens and targets 114, T5's pretraining lengths).

The pipeline (`span_corruption_preprocessors`) is T5's `span_corruption` task after tokenizing:
concatenate documents (`reduce_concat_tokens`), cut the stream into pieces of the raw length
(`split_tokens`), corrupt each piece (`span_corrupt`); seqio's `append_eos_after_trim` then adds
EOS. Randomness comes from seqio's stateless per-example seeds (`seqio.map_over_dataset(
num_seeds=2)`), so `get_dataset(seed=S)` gives the same examples for the same S. T5's
`select_random_chunk` (which keeps a random window of at most 65,536 tokens of each document) is
left out: it only matters for longer documents, and without it a piece depends only on the
documents and their order.

Written here rather than imported: the `t5` package on PyPI (0.9.4) requires mesh-tensorflow,
seqio-nightly and tfds-nightly, which conflict with the pinned seqio and tensorflow-datasets, so
it is not installed and no test compares against it. The tests check one corruption worked by
hand, the mask's statistics over many examples, seeding, and the lengths against T5's values.
"""

from __future__ import annotations

import functools

import seqio
import tensorflow as tf

from dsbs_jax.errors import UserError

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
CONCAT_DOCUMENTS = 128  # documents concatenated at a time (T5's reduce_concat_tokens batch_size)


def check_noise(noise_density: float, mean_noise_span_length: float) -> None:
    """Refuses settings outside (0, 1) and below one token per span."""
    if not 0.0 < noise_density < 1.0:
        raise UserError(f"noise_density must be in (0, 1), got {noise_density}")
    if not mean_noise_span_length >= 1.0:
        raise UserError(f"mean_noise_span_length must be at least 1, got {mean_noise_span_length}")


def _corrupted_lengths(
    tokens_length: int, noise_density: float, mean_noise_span_length: float
) -> tuple[int, int]:
    """(inputs, targets) lengths, each with EOS, of a full piece of `tokens_length` tokens."""
    noise = int(round(tokens_length * noise_density))
    spans = int(round(noise / mean_noise_span_length))
    return tokens_length - noise + spans + 1, noise + spans + 1


def input_and_target_lengths(
    inputs_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """(tokens_length, targets_length): the largest raw length whose corrupted inputs (with EOS)
    fit `inputs_length`, and its targets length (with EOS). T5's `random_spans_helper` rule."""
    check_noise(noise_density, mean_noise_span_length)
    if isinstance(inputs_length, bool) or not isinstance(inputs_length, int) or inputs_length < 2:
        raise UserError(f"the inputs length must be an integer of at least 2, got {inputs_length}")
    tokens_length = inputs_length - 1
    while (
        _corrupted_lengths(tokens_length + 1, noise_density, mean_noise_span_length)[0]
        <= inputs_length
    ):
        tokens_length += 1
    targets_length = _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length)[1]
    if noise_density == 0.5 and targets_length > inputs_length:
        # T5 trims a token here so that targets are no longer than inputs at density 0.5.
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def num_noise_spans(
    length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> int:
    """How many noise spans (so sentinels) `random_spans_noise_mask` gives `length` tokens."""
    length = max(length, 2)
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    return max(int(round(noise / mean_noise_span_length)), 1)


def _shuffle(values: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A stateless random permutation of a vector."""
    keys = tf.random.stateless_uniform(tf.shape(values), seed=seed)
    return tf.gather(values, tf.argsort(keys))


def _random_span_lengths(num_items: tf.Tensor, num_spans: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Cuts `num_items` items into `num_spans` non-empty spans at random; their lengths.

    A span starts after each of num_spans - 1 distinct cut points drawn among the
    num_items - 1 gaps between items."""
    gaps = tf.range(num_items - 1)
    cuts = _shuffle(tf.cast(gaps < num_spans - 1, tf.int32), seed)
    span_ids = tf.cumsum(tf.concat([[0], cuts], axis=0))
    return tf.math.bincount(span_ids, minlength=num_spans, maxlength=num_spans, dtype=tf.int32)


def random_spans_noise_mask(
    length,
    seeds,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.Tensor:
    """A boolean noise mask of `length` (scalar int tensor or int): True where a token is noise.

    `seeds`: two stateless seeds (each an int32 pair), one for the noise spans and one for the
    non-noise spans. Sequences shorter than 2 are drawn as if of length 2 and cut back."""
    length = tf.cast(length, tf.int32)
    drawn = tf.maximum(length, 2)
    # In float64, as `input_and_target_lengths` counts: T5 counts the mask's tokens in float32,
    # which rounds the other way where length * density is near a half (70 tokens: 10.5), and
    # then gives 2 more target tokens than its length rule allows for.
    noise = tf.cast(tf.round(tf.cast(drawn, tf.float64) * noise_density), tf.int32)
    noise = tf.clip_by_value(noise, 1, drawn - 1)
    spans = tf.cast(tf.round(tf.cast(noise, tf.float64) / mean_noise_span_length), tf.int32)
    spans = tf.maximum(spans, 1)
    noise_lengths = _random_span_lengths(noise, spans, seeds[0])
    kept_lengths = _random_span_lengths(drawn - noise, spans, seeds[1])
    # kept span 0, noise span 0, kept span 1, noise span 1, ...
    lengths = tf.reshape(tf.stack([kept_lengths, noise_lengths], axis=1), [-1])
    is_noise = tf.tile([False, True], [spans])
    return tf.repeat(is_noise, lengths)[:length]


def replace_spans_with_sentinels(tokens: tf.Tensor, mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
    """Each run of masked tokens becomes one sentinel: the first run vocab_size - 1, the next
    vocab_size - 2, ...; unmasked tokens are kept."""
    previous = tf.concat([[False], mask[:-1]], axis=0)
    starts = tf.logical_and(mask, tf.logical_not(previous))
    sentinels = vocab_size - tf.cumsum(tf.cast(starts, tokens.dtype))
    tokens = tf.where(starts, sentinels, tokens)
    return tf.boolean_mask(tokens, tf.logical_not(tf.logical_and(mask, previous)))


def corrupt(tokens: tf.Tensor, noise_mask: tf.Tensor, vocab_size: int) -> dict[str, tf.Tensor]:
    """`inputs` (noise spans replaced by sentinels) and `targets` (each sentinel, then its span)
    of one token sequence under a given noise mask."""
    return {
        "inputs": replace_spans_with_sentinels(tokens, noise_mask, vocab_size),
        "targets": replace_spans_with_sentinels(tokens, tf.logical_not(noise_mask), vocab_size),
    }


def reduce_concat_tokens(
    dataset: tf.data.Dataset, feature_key: str = "targets", batch_size: int = CONCAT_DOCUMENTS
) -> tf.data.Dataset:
    """Concatenates the `feature_key` tokens of `batch_size` examples at a time into one
    example (the other features are dropped), as T5's `reduce_concat_tokens`."""
    dataset = dataset.map(lambda ex: ex[feature_key], num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.ragged_batch(batch_size)
    return dataset.map(lambda rows: {feature_key: rows.flat_values})


def split_tokens(
    dataset: tf.data.Dataset, max_tokens: int, feature_key: str = "targets"
) -> tf.data.Dataset:
    """Cuts each example's `feature_key` tokens into pieces of `max_tokens` (the last one
    shorter), one example each; empty examples give none."""

    def pieces(ex):
        tokens = ex[feature_key]
        n = tf.size(tokens)
        rows = tf.reshape(tf.pad(tokens, [[0, (-n) % max_tokens]]), [-1, max_tokens])
        lengths = tf.minimum(n - tf.range(0, n, max_tokens), max_tokens)
        rows = tf.RaggedTensor.from_tensor(rows, lengths=lengths)
        return tf.data.Dataset.from_tensor_slices({feature_key: rows})

    return dataset.flat_map(pieces)


@seqio.map_over_dataset(num_seeds=2)
@tf.autograph.experimental.do_not_convert  # plain TF ops: nothing for autograph to convert
def _span_corrupt_example(ex, seeds, vocab_size, noise_density, mean_noise_span_length):
    tokens = ex["targets"]
    mask = random_spans_noise_mask(tf.size(tokens), seeds, noise_density, mean_noise_span_length)
    return corrupt(tokens, mask, vocab_size)


def span_corrupt(
    dataset: tf.data.Dataset,
    output_features,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.data.Dataset:
    """seqio preprocessor: each example's `targets` tokens become span-corrupted `inputs` and
    `targets` (no EOS yet), with sentinels from the targets vocabulary's extra ids."""
    vocab_size = output_features["targets"].vocabulary.vocab_size
    return _span_corrupt_example(
        dataset,
        vocab_size=vocab_size,
        noise_density=noise_density,
        mean_noise_span_length=mean_noise_span_length,
    )


def concat_and_split(
    dataset: tf.data.Dataset,
    sequence_length=None,
    default_inputs_length: int = 512,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.data.Dataset:
    """seqio preprocessor: documents concatenated and cut into pieces of the raw length whose
    corruption fits the inputs length (seqio's `sequence_length`, else `default_inputs_length`)."""
    inputs_length = (sequence_length or {}).get("inputs") or default_inputs_length
    tokens_length, _ = input_and_target_lengths(
        int(inputs_length), noise_density, mean_noise_span_length
    )
    dataset = dataset.filter(lambda ex: tf.size(ex["targets"]) > 0)
    return split_tokens(reduce_concat_tokens(dataset), tokens_length)


def span_corruption_preprocessors(
    default_inputs_length: int = 512,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> list:
    """What follows tokenization (of the text into `targets`) in a span-corruption task:
    concatenate, split, corrupt, append EOS."""
    noise = {"noise_density": noise_density, "mean_noise_span_length": mean_noise_span_length}
    return [
        functools.partial(concat_and_split, default_inputs_length=default_inputs_length, **noise),
        functools.partial(span_corrupt, **noise),
        seqio.preprocessors.append_eos_after_trim,
    ]

"""Human-rated sentences from VADER's ground truth, as finetuning data.

The source archive of ``vaderSentiment==3.3.2`` (its wheel lacks the data)
carries ``additional_resources/hutto_ICWSM_2014.tar.gz``, the ground truth of
Hutto and Gilbert's study: sentences rated for sentiment by about 20 people
each, mean rating in [-4, 4]. We use two of its files:

- ``movieReviewSnippets_GroundTruth.txt``: 10,605 Rotten Tomatoes sentences,
  Pang and Lee's (2005) sentence polarity data, which GLUE's SST-2 is also
  built from. Binary sentiment by the rating's sign (the 37 zeros dropped):
  5,242 positive, 5,326 negative. This is the finetuning task.
- ``nytEditorialSnippets_GroundTruth.txt``: 5,190 New York Times editorial
  sentences: text of another domain, used to measure forgetting.

References:
  C. J. Hutto and E. Gilbert. VADER: A Parsimonious Rule-based Model for
  Sentiment Analysis of Social Media Text. ICWSM 2014.
  B. Pang and L. Lee. Seeing stars: Exploiting class relationships for
  sentiment categorization with respect to rating scales. ACL 2005.
"""

from typing import NamedTuple

import numpy as np
from package_cache import Package
from package_cache import PackagedFile
from package_cache import fetch

_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz!"
VADER = Package(
  requirement="vaderSentiment==3.3.2",
  source=True,
  files={
    "movie_reviews.txt": PackagedFile(
      _INNER + "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
      "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
    ),
    "nyt_editorials.txt": PackagedFile(
      _INNER + "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
      "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
    ),
  },
)


class Labelled(NamedTuple):
  sentences: list[str]
  labels: np.ndarray  # shape=(n,), dtype=int32; 1 positive, 0 negative


class Splits(NamedTuple):
  train: Labelled
  val: Labelled
  test: Labelled


def read_ground_truth(path) -> tuple[list[str], np.ndarray]:
  """Rows ``id <TAB> mean rating <TAB> text`` (CRLF, UTF-8 with a BOM)."""
  sentences, ratings = [], []
  with open(path, encoding="utf-8-sig", newline="") as lines:
    for line in lines:
      _, rating, text = line.rstrip("\r\n").split("\t")
      sentences.append(text)
      ratings.append(float(rating))
  return sentences, np.array(ratings)


def load_movie_reviews(val: int = 1000, test: int = 2000) -> Splits:
  """Binary sentiment, split once by a fixed permutation (seed 0).

  The split never depends on a training seed: every method and seed sees
  the same train, validation and test sentences.
  """
  sentences, ratings = read_ground_truth(fetch(VADER)["movie_reviews.txt"])
  keep = np.flatnonzero(ratings != 0)
  order = np.random.default_rng(0).permutation(keep)
  labels = (ratings > 0).astype(np.int32)
  parts = np.split(order, [test, test + val])

  def subset(indices):
    return Labelled([sentences[i] for i in indices], labels[indices])

  test_part, val_part, train_part = (subset(p) for p in parts)
  return Splits(train=train_part, val=val_part, test=test_part)


def load_nyt_editorials(count: int) -> list[str]:
  """``count`` editorial sentences, a fixed random sample (seed 1)."""
  sentences, _ = read_ground_truth(fetch(VADER)["nyt_editorials.txt"])
  chosen = np.random.default_rng(1).choice(len(sentences), count, False)
  return [sentences[i] for i in sorted(chosen)]

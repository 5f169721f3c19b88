"""The training recipe a user never has to think about: `nann train`'s defaults, chosen by the size of the data.

Measured on real logs (perf/RESULTS.md "Real logs", `python -m perf.real_logs report`) and the synthetic data:

* **Epochs: as many as help.** One pass over a small log leaves the model far from what it learns (issue #24's probe
  on a MovieLens 1M piece: recall 0.56 after one epoch, 0.75 after three). Training runs until the validation recall
  has not improved for PATIENCE epochs and keeps the best epoch's weights (``trainer.train.BestModel``), within a
  budget of SAMPLE_BUDGET samples (at most MAX_EPOCHS epochs): a 130k-sample log may take up to 50 epochs (attention
  on Amazon Beauty still improved at epoch 9: validation recall 0.134 → 0.233), an 8M-sample catalogue gets one or two.
* **Negatives: 20.** The cost of a step grows with the negatives (each is a user-candidate pair through the
  attention and the score network), the quality did not: Amazon Beauty's best validation recall with 19 / 49 / 199
  negatives was 0.210 / 0.194 / 0.201 for the two-tower model and 0.226 / 0.227 (19 / 49) for attention, at 2000
  validation users (±0.01).
* **Noise: half unigram, half uniform.** With unigram noise alone a rare item is almost never a negative, so nothing
  holds its raw score down while its few positives push it up: on Amazon Home & Kitchen (28k items, 5-core) the
  attention model's validation recall@200 went 0.105 → 0.009 from epoch 1 to 2 while the training loss kept falling,
  its top 200 items of median training count 3 (the targets': 28; the epoch-1 model's top: 174). Half the noise
  drawn uniformly (`NoiseSampler`, the NCE correction uses the mixture's q) samples every item as a negative
  ~(k/2)/N times per sample. `--uniform-noise 0` restores plain unigram noise.
* **Never below the two-tower baseline on validation** (`trainer.train.warm_start`, with the user tower:
  `nann.model`). The two-tower model trains first (a fraction of the time); the model made equal to it (its item
  network, recency tables and user tower copied, its other terms zero) is validated as epoch 0, and the model trained
  from random weights is kept only where an epoch beats it. Measured (`python -m perf.real_logs report`): on MovieLens
  100K the model from random weights stopped at validation recall 0.785 against the two-tower's 0.793 (test 0.735 vs
  0.753); on Taobao's 2-hour slice it beats the two-tower model by far. Training *from* the two-tower weights
  helped the dense log and hurt the sparse one: with the copied parts at a tenth of the learning rate
  (WARM_LR_SCALE), MovieLens 100K reached 0.804 (test 0.759) but Taobao's slice stayed near the two-tower (test 0.099
  against 0.153 from random weights); at the full rate the first epoch left the two-tower optimum (0.793 -> 0.785).
  So both run, in turn: where no epoch from random weights beats epoch 0, training goes on from epoch 0's weights
  (a second phase of up to as many epochs, its patience counted from epoch 0's recall), and the run keeps the best
  epoch of either. Measured as the report runs it: MovieLens 100K validation 0.7932 (epoch 0) -> 0.8059 (epoch 12,
  the third of the second phase), test 0.7635 vs the two-tower's 0.7529; Amazon Beauty's second phase fell from
  epoch 0's 0.2290 at once (0.2225, 0.2190, 0.2150), so that run keeps epoch 0. `--no-warm-start` skips the epoch-0
  candidate and the second phase.
* **FGSM off.** At the paper's ε = 3e-4 the adversarial term's gradient is 1e-6 to 1e-5 of the NCE gradient on our
  models (attention on Beauty: 8.7e-7; two-tower on MovieLens 100K: 1.3e-5) — it changes nothing — and it doubles
  the time of a step (a second pass through the scorer and its backward). `--fgsm-eps 3e-4` restores it.
* **Validation and test users by catalogue size:** brute-force recall costs users × items scorer rows, so the users
  checked shrink as the catalogue grows, within [least, most] (on a GPU, the most).
"""
from __future__ import annotations

import math

NEGATIVES = 20
UNIFORM_NOISE = 0.5
WARM_LR_SCALE = 0.1
PAPER_NEGATIVES = 199
FGSM_EPS = 0.0
PAPER_FGSM_EPS = 3e-4
PATIENCE = 3
SAMPLE_BUDGET = 10_000_000
MAX_EPOCHS = 50
# users checked by brute force: (scorer rows per check, least, most)
EVAL_USERS = {"val": (50_000_000, 200, 2000), "test": (100_000_000, 500, 10_000)}


def max_epochs(samples_per_epoch: int) -> int:
    """The epoch cap of `--epochs 0` (auto): SAMPLE_BUDGET samples, at least one epoch, at most MAX_EPOCHS."""
    return max(1, min(MAX_EPOCHS, math.ceil(SAMPLE_BUDGET / max(1, samples_per_epoch))))


def eval_users(kind: str, num_items: int, on_gpu: bool = False) -> int:
    """Validation ("val") or test users whose recall is checked by brute force over `num_items` items."""
    rows, least, most = EVAL_USERS[kind]
    return most if on_gpu else max(least, min(most, rows // max(1, num_items)))
